-- kemi-outbound's guard on Kamailio's location table (PostgreSQL; applied after
-- usrloc-create.sql): Kamailio 5.6's usrloc refuses to load a row whose ruid is
-- empty ("no ruid for aor") and the whole server stops at start. usrloc always
-- writes one; the database refuses a row without it from anyone else.
ALTER TABLE location ADD CONSTRAINT ko_location_ruid_set CHECK (ruid <> '');
