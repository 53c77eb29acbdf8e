//! The marketplace schema, as migrations applied in order by [`super::store::Store`].
//!
//! Every statement runs on SQLite and PostgreSQL alike: `TEXT` ids, `BIGINT` integers (times
//! are µs since the epoch, money is minor units), no autoincrement, no vendor types. Never
//! edit a migration that has shipped; add the next one.

/// Schema versions, oldest first.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
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
    (
        4,
        // Plans per dataset; subscriptions to them; the payments that paid subscription
        // periods; payment-provider events seen (their ids make replays do nothing); the
        // payment provider's customer of each account.
        "CREATE TABLE plans (
            id             TEXT PRIMARY KEY,
            dataset        TEXT NOT NULL REFERENCES datasets(id),
            name           TEXT NOT NULL,
            kind           TEXT NOT NULL CHECK (kind IN ('free', 'monthly', 'metered')),
            currency       TEXT NOT NULL,
            price_minor    BIGINT NOT NULL,
            per_1000_minor BIGINT NOT NULL,
            delay_us       BIGINT NOT NULL,
            aggregate_us   BIGINT NOT NULL,
            active         BIGINT NOT NULL,
            created_at     BIGINT NOT NULL
        );
        CREATE INDEX plans_dataset ON plans (dataset);
        CREATE TABLE subscriptions (
            id                   TEXT PRIMARY KEY,
            account              TEXT NOT NULL REFERENCES accounts(id),
            plan                 TEXT NOT NULL REFERENCES plans(id),
            dataset              TEXT NOT NULL REFERENCES datasets(id),
            status               TEXT NOT NULL CHECK (status IN
                ('pending_payment', 'active', 'past_due', 'cancelled', 'expired')),
            payment_provider     TEXT NOT NULL,
            payment_ref          TEXT,
            checkout_url         TEXT,
            checkout_ref         TEXT,
            period_start         BIGINT,
            period_end           BIGINT,
            cancel_at_period_end BIGINT NOT NULL,
            created_at           BIGINT NOT NULL,
            updated_at           BIGINT NOT NULL
        );
        CREATE INDEX subscriptions_account ON subscriptions (account);
        CREATE INDEX subscriptions_dataset ON subscriptions (dataset);
        CREATE INDEX subscriptions_payment_ref ON subscriptions (payment_ref);
        CREATE TABLE payments (
            id           TEXT PRIMARY KEY,
            subscription TEXT NOT NULL REFERENCES subscriptions(id),
            provider     TEXT NOT NULL,
            reference    TEXT NOT NULL,
            amount_minor BIGINT NOT NULL,
            currency     TEXT NOT NULL,
            period_start BIGINT NOT NULL,
            period_end   BIGINT NOT NULL,
            paid_at      BIGINT NOT NULL,
            UNIQUE (provider, reference)
        );
        CREATE INDEX payments_subscription ON payments (subscription);
        CREATE TABLE payment_events (
            id          TEXT PRIMARY KEY,
            provider    TEXT NOT NULL,
            kind        TEXT NOT NULL,
            received_at BIGINT NOT NULL
        );
        CREATE TABLE payment_customers (
            provider  TEXT NOT NULL,
            account   TEXT NOT NULL REFERENCES accounts(id),
            reference TEXT NOT NULL,
            PRIMARY KEY (provider, account)
        );",
    ),
    (
        5,
        // Metered deliveries per subscription and hour; the ids of usage batches already
        // written (a retried flush adds nothing twice); invoices per subscriber, period and
        // currency, with their lines.
        "CREATE TABLE usage_hours (
            subscription TEXT NOT NULL REFERENCES subscriptions(id),
            hour         BIGINT NOT NULL,
            readings     BIGINT NOT NULL,
            bytes        BIGINT NOT NULL,
            PRIMARY KEY (subscription, hour)
        );
        CREATE TABLE usage_flushes (
            id         TEXT PRIMARY KEY,
            flushed_at BIGINT NOT NULL
        );
        CREATE TABLE invoices (
            id           TEXT PRIMARY KEY,
            account      TEXT NOT NULL REFERENCES accounts(id),
            period       TEXT NOT NULL,
            currency     TEXT NOT NULL,
            total_minor  BIGINT NOT NULL,
            due_minor    BIGINT NOT NULL,
            status       TEXT NOT NULL CHECK (status IN ('open', 'paid')),
            created_at   BIGINT NOT NULL,
            paid_at      BIGINT,
            UNIQUE (account, period, currency)
        );
        CREATE INDEX invoices_period ON invoices (period);
        CREATE TABLE invoice_lines (
            invoice      TEXT NOT NULL REFERENCES invoices(id),
            line         BIGINT NOT NULL,
            subscription TEXT NOT NULL,
            dataset      TEXT NOT NULL,
            plan         TEXT NOT NULL,
            kind         TEXT NOT NULL,
            description  TEXT NOT NULL,
            quantity     BIGINT NOT NULL,
            unit_minor   BIGINT NOT NULL,
            amount_minor BIGINT NOT NULL,
            settled      BIGINT NOT NULL,
            PRIMARY KEY (invoice, line)
        );",
    ),
    (
        6,
        // One live subscription per account and plan, held by the database: racing
        // subscribes (PostgreSQL runs them side by side) get one row and one conflict.
        // Duplicates such races made before are ended first, keeping the newest.
        "UPDATE subscriptions SET status = 'cancelled'
            WHERE status IN ('pending_payment', 'active', 'past_due')
              AND EXISTS (SELECT 1 FROM subscriptions newer
                          WHERE newer.account = subscriptions.account
                            AND newer.plan = subscriptions.plan
                            AND newer.status IN ('pending_payment', 'active', 'past_due')
                            AND (newer.created_at > subscriptions.created_at
                                 OR (newer.created_at = subscriptions.created_at
                                     AND newer.id > subscriptions.id)));
        CREATE UNIQUE INDEX subscriptions_live_plan ON subscriptions (account, plan)
            WHERE status IN ('pending_payment', 'active', 'past_due');",
    ),
    (
        7,
        // How far back a plan's history queries reach (0: as far as the lake goes), and
        // the rows history queries returned, metered apart from live deliveries.
        "ALTER TABLE plans ADD COLUMN history_us BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE usage_hours ADD COLUMN query_rows BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE usage_hours ADD COLUMN query_bytes BIGINT NOT NULL DEFAULT 0;",
    ),
    (
        8,
        // The web console's browser sessions, shared by every node on the database: by the
        // SHA-256 of the cookie, with the key's secret sealed under the cookie (which only
        // the browser has) and the SHA-256 of the CSRF token.
        "CREATE TABLE browser_sessions (
            id         TEXT PRIMARY KEY,
            key_id     TEXT NOT NULL,
            sealed     TEXT NOT NULL,
            csrf_hash  TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX browser_sessions_key ON browser_sessions (key_id, created_at);
        CREATE INDEX browser_sessions_expiry ON browser_sessions (expires_at);",
    ),
];
