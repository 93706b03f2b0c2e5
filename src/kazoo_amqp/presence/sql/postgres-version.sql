-- Kamailio's `version` table (standard schema), PostgreSQL. Placeholders: none.
-- Created only when missing, with its own row ('version', 1) as Kamailio's standard-create.sql has.
CREATE TABLE IF NOT EXISTS version (
    id SERIAL PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_table_name_idx UNIQUE (table_name)
);
