//! The marketplace schema, as migrations applied in order by [`super::store::Store`].
//!
//! Every statement runs on SQLite and PostgreSQL alike: `TEXT` ids, `BIGINT` integers (times
//! are µs since the epoch, money is minor units), no autoincrement, no vendor types. Never
//! edit a migration that has shipped; add the next one.

/// Schema versions, oldest first.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE api_keys (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('device', 'provider')),
            owner       TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            created_at  BIGINT NOT NULL,
            revoked_at  BIGINT
        );
        CREATE TABLE api_key_datasets (
            key_id  TEXT NOT NULL REFERENCES api_keys(id),
            dataset TEXT NOT NULL,
            PRIMARY KEY (key_id, dataset)
        );",
    ),
    (
        2,
        // Accounts with roles; keys for every role, each belonging to an account, with an
        // optional expiry and a successor when rotated. Keys of version 1 carry over; their
        // owners become provider accounts.
        "CREATE TABLE accounts (
            id          TEXT PRIMARY KEY,
            role        TEXT NOT NULL CHECK (role IN ('admin', 'provider', 'subscriber')),
            name        TEXT NOT NULL,
            sector      TEXT NOT NULL,
            email       TEXT,
            created_at  BIGINT NOT NULL
        );
        CREATE TABLE keys (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('admin', 'provider', 'subscriber', 'device')),
            account     TEXT NOT NULL REFERENCES accounts(id),
            label       TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            created_at  BIGINT NOT NULL,
            expires_at  BIGINT,
            revoked_at  BIGINT,
            replaced_by TEXT
        );
        CREATE INDEX keys_account ON keys (account);
        CREATE TABLE key_datasets (
            key_id  TEXT NOT NULL REFERENCES keys(id),
            dataset TEXT NOT NULL,
            PRIMARY KEY (key_id, dataset)
        );
        INSERT INTO accounts (id, role, name, sector, created_at)
            SELECT owner, 'provider', owner, 'public', MIN(created_at) FROM api_keys GROUP BY owner;
        INSERT INTO keys (id, kind, account, label, secret_hash, created_at, revoked_at)
            SELECT id, kind, owner, '', secret_hash, created_at, revoked_at FROM api_keys;
        INSERT INTO key_datasets (key_id, dataset) SELECT key_id, dataset FROM api_key_datasets;
        DROP TABLE api_key_datasets;
        DROP TABLE api_keys;",
    ),
    (
        3,
        // The catalog: every dataset, from the config file or created by its provider over
        // the API. `spec` is the dataset's declaration as JSON (the config's shape).
        "CREATE TABLE datasets (
            id           TEXT PRIMARY KEY,
            provider     TEXT NOT NULL REFERENCES accounts(id),
            origin       TEXT NOT NULL CHECK (origin IN ('config', 'api')),
            spec         TEXT NOT NULL,
            created_at   BIGINT NOT NULL,
            updated_at   BIGINT NOT NULL,
            withdrawn_at BIGINT
        );
        CREATE INDEX datasets_provider ON datasets (provider);",
    ),
];
