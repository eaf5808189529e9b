-- kemi-outbound's guard on Kamailio's location table (SQLite; applied after
-- usrloc-create.sql): Kamailio 5.6's usrloc refuses to load a row whose ruid is
-- empty ("no ruid for aor") and the whole server stops at start. usrloc always
-- writes one; the database refuses a row without it from anyone else.
CREATE TRIGGER ko_location_ruid_insert BEFORE INSERT ON location
    WHEN NEW.ruid IS NULL OR NEW.ruid = ''
BEGIN
    SELECT RAISE(ABORT, 'location.ruid must not be empty (a row without it stops Kamailio at start)');
END;
CREATE TRIGGER ko_location_ruid_update BEFORE UPDATE OF ruid ON location
    WHEN NEW.ruid IS NULL OR NEW.ruid = ''
BEGIN
    SELECT RAISE(ABORT, 'location.ruid must not be empty (a row without it stops Kamailio at start)');
END;
