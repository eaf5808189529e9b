-- kemi-outbound's addition to Kamailio's subscriber table (auth_db-create.sql of
-- Debian's kamailio-sqlite-modules / kamailio-postgres-modules, applied first):
-- the SHA-256 HA1 (RFC 8760) beside Kamailio's MD5 ha1 / ha1b. Never a clear-text
-- password: the password column stays empty (docs/operations.md, "Subscribers").
ALTER TABLE subscriber ADD COLUMN ha1_sha256 VARCHAR(128) DEFAULT '' NOT NULL;
