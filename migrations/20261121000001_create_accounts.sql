-- Accounts: users, their roles and their refresh-token sessions.
-- Written by: ingress.

-- pg_trgm powers typo-tolerant event search (trigram word similarity of each query word to the
-- title). It is a trusted extension, so the database owner may create it without superuser rights.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE app_user (
    app_user_id   uuid PRIMARY KEY,
    -- Stored lower-cased by the application; the unique index below still guards against a
    -- differently-cased duplicate slipping in through another path.
    email         text        NOT NULL,
    name          text        NOT NULL,
    -- argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash); never a plain password.
    password_hash text        NOT NULL,
    role          text        NOT NULL DEFAULT 'customer',
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Only the three roles the API knows; a typo in code becomes an error, not a new role.
    CONSTRAINT app_user_role_known CHECK (role IN ('customer', 'organizer', 'admin')),
    -- Keeps absurd values out: RFC 5321 caps an address at 254 characters.
    CONSTRAINT app_user_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    CONSTRAINT app_user_name_length CHECK (char_length(name) BETWEEN 1 AND 200)
);

-- One account per e-mail address, whatever its case: register answers 409 on a duplicate.
CREATE UNIQUE INDEX app_user_email_unique ON app_user (lower(email));
-- Serves "who are the admins?" (few rows, so a partial index).
CREATE INDEX app_user_role_idx ON app_user (role) WHERE role = 'admin';

-- A refresh token. Tokens rotate: every refresh revokes the presented token and issues a new one
-- in the same family; presenting a revoked token again revokes the whole family (token theft).
CREATE TABLE session (
    session_id         uuid PRIMARY KEY,
    app_user_id        uuid        NOT NULL REFERENCES app_user (app_user_id) ON DELETE CASCADE,
    -- All tokens descending from one login share a family id.
    family_id          uuid        NOT NULL,
    -- SHA-256 of the opaque token; the token itself is never stored.
    refresh_token_hash bytea       NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    revoked_at         timestamptz,
    -- A token hash identifies exactly one session; lookups by hash serve refresh and logout.
    CONSTRAINT session_refresh_token_hash_unique UNIQUE (refresh_token_hash),
    CONSTRAINT session_hash_is_sha256 CHECK (octet_length(refresh_token_hash) = 32),
    CONSTRAINT session_expires_after_creation CHECK (expires_at > created_at)
);

-- Serves "revoke every token of this family" on reuse detection.
CREATE INDEX session_family_idx ON session (family_id);
-- Serves the foreign key (user deletion) and "sessions of a user".
CREATE INDEX session_user_idx ON session (app_user_id);
