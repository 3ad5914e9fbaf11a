-- Which CA issued each agent certificate (the fingerprint of its certificate: hex SHA-256 of the DER, 16 characters),
-- so a CA rotation can tell when every agent holds a certificate from the new CA. '' for rows from before.
ALTER TABLE issued_certificates ADD COLUMN ca TEXT NOT NULL DEFAULT '';
