-- Key material: the lease-signing keys and the code HMAC key, sealed (AES-GCM) under the
-- deployment's secret key, which the database never holds. Until this version they were
-- files in the data directory (keys/*.pem, code-key); the broker imports those at start.

CREATE TABLE key_material (
    purpose  TEXT NOT NULL CHECK (purpose IN ('signing', 'code')),
    kid      TEXT NOT NULL,
    created  INTEGER NOT NULL,
    sealed   BLOB NOT NULL,
    PRIMARY KEY (purpose, kid)
);
-- One code key per deployment: every replica must store and check codes under the same one.
CREATE UNIQUE INDEX key_material_one_code_key ON key_material(purpose) WHERE purpose = 'code';
