"""The versioned fits table: schema, table, store, seeding, lookup, SPIN interchange."""
