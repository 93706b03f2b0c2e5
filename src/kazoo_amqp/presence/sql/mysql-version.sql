-- Kamailio's `version` table (standard schema), MySQL/MariaDB. Placeholders: none.
-- Created only when missing, with its own row ('version', 1) as Kamailio's standard-create.sql has.
CREATE TABLE IF NOT EXISTS version (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INT UNSIGNED DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
);
