-- Kamailio 5.6 presence `presentity` table, schema version 5, MySQL/MariaDB.
-- Placeholder: ${table} (the configured presentity_table). Index names are per table in MySQL,
-- so they are Kamailio's own whatever the table is called. BLOB holds at most 64 KiB.
CREATE TABLE ${table} (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    event VARCHAR(64) NOT NULL,
    etag VARCHAR(128) NOT NULL,
    expires INT(11) NOT NULL,
    received_time INT(11) NOT NULL,
    body BLOB NOT NULL,
    sender VARCHAR(255) NOT NULL,
    priority INT(11) DEFAULT 0 NOT NULL,
    ruid VARCHAR(64),
    CONSTRAINT presentity_idx UNIQUE (username, domain, event, etag),
    CONSTRAINT ruid_idx UNIQUE (ruid)
) ENGINE=InnoDB;
CREATE INDEX presentity_expires ON ${table} (expires);
CREATE INDEX account_idx ON ${table} (username, domain, event);
