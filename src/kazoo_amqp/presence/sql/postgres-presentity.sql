-- Kamailio 5.6 presence `presentity` table, schema version 5, PostgreSQL.
-- Placeholder: ${table} (the configured presentity_table; `presentity` gives Kamailio's names).
CREATE TABLE ${table} (
    id SERIAL PRIMARY KEY NOT NULL,
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    event VARCHAR(64) NOT NULL,
    etag VARCHAR(128) NOT NULL,
    expires INTEGER NOT NULL,
    received_time INTEGER NOT NULL,
    body BYTEA NOT NULL,
    sender VARCHAR(255) NOT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    ruid VARCHAR(64),
    CONSTRAINT ${table}_presentity_idx UNIQUE (username, domain, event, etag),
    CONSTRAINT ${table}_ruid_idx UNIQUE (ruid)
);
CREATE INDEX ${table}_presentity_expires ON ${table} (expires);
CREATE INDEX ${table}_account_idx ON ${table} (username, domain, event);
