# Owned by the generic-registry work: Registry<Key,Value>, HandleRegistry (get_or_start), sync points.
