import sys

from kazoo_amqp.cli import main

sys.exit(main())
