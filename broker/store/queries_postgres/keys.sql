-- Key material, sealed under the deployment's secret key (broker/keymaterial.py).

-- name: key_material_all
SELECT purpose, kid, created, sealed FROM key_material ORDER BY purpose, created, kid;

-- name: signing_keys
SELECT kid, created, sealed FROM key_material WHERE purpose = 'signing' ORDER BY created, kid;

-- name: code_key
SELECT kid, created, sealed FROM key_material WHERE purpose = 'code';

-- name: newest_signing_key_created
SELECT MAX(created) FROM key_material WHERE purpose = 'signing';

-- name: insert_key_material
INSERT INTO key_material (purpose, kid, created, sealed)
VALUES (:purpose, :kid, :created, :sealed)
ON CONFLICT DO NOTHING;
