-- Catalog: venues and their seat layout, events and shows.
-- Written by: ingress (organizer/admin API); read by everyone.

CREATE TABLE venue (
    venue_id   uuid PRIMARY KEY,
    name       text        NOT NULL,
    city       text        NOT NULL,
    address    text        NOT NULL,
    -- IANA time zone name of the venue, for rendering local times.
    timezone   text        NOT NULL,
    -- Number of seats generated for the venue; fixed once created (the layout is immutable).
    seat_count integer     NOT NULL,
    created_by uuid        REFERENCES app_user (app_user_id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT venue_seat_count_positive CHECK (seat_count > 0)
);


CREATE TABLE section (
    section_id uuid PRIMARY KEY,
    venue_id   uuid    NOT NULL REFERENCES venue (venue_id) ON DELETE CASCADE,
    name       text    NOT NULL,
    -- Order of the section in the venue definition.
    position   integer NOT NULL,
    -- Section names identify a section to a fan ("Balcony, row C, seat 12").
    CONSTRAINT section_name_unique_per_venue UNIQUE (venue_id, name),
    CONSTRAINT section_position_unique_per_venue UNIQUE (venue_id, position)
);

-- The immutable layout of one seat.
CREATE TABLE seat (
    seat_id    uuid PRIMARY KEY,
    venue_id   uuid    NOT NULL REFERENCES venue (venue_id) ON DELETE CASCADE,
    section_id uuid    NOT NULL REFERENCES section (section_id) ON DELETE CASCADE,
    -- Dense index 0..seat_count-1: the seat's bit in the availability bitmap.
    seat_index integer NOT NULL,
    row_label  text    NOT NULL,
    number     integer NOT NULL,
    x          real    NOT NULL,
    y          real    NOT NULL,
    -- Price tier; a show prices every tier its venue has.
    tier       text    NOT NULL,
    accessible boolean NOT NULL DEFAULT false,
    -- One bitmap position per seat: two seats sharing an index would share availability.
    CONSTRAINT seat_index_unique_per_venue UNIQUE (venue_id, seat_index),
    -- A seat label (section, row, number) names exactly one seat: tickets print it.
    CONSTRAINT seat_label_unique UNIQUE (section_id, row_label, number),
    CONSTRAINT seat_index_non_negative CHECK (seat_index >= 0),
    CONSTRAINT seat_number_positive CHECK (number > 0)
);

CREATE TABLE event (
    event_id    uuid PRIMARY KEY,
    title       text        NOT NULL,
    category    text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    city        text        NOT NULL,
    created_by  uuid        REFERENCES app_user (app_user_id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Full-text document: the title weighs most, then category and city, then the description.
    search      tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', category || ' ' || city), 'B') ||
        setweight(to_tsvector('english', description), 'C')
    ) STORED,
    CONSTRAINT event_title_length CHECK (char_length(title) BETWEEN 1 AND 200)
);

-- Serves full-text search (`q`).
CREATE INDEX event_search_idx ON event USING gin (search);
-- Serve the `city` and `category` filters.
CREATE INDEX event_city_idx ON event (lower(city));
CREATE INDEX event_category_idx ON event (lower(category));

CREATE TABLE show (
    show_id              uuid PRIMARY KEY,
    event_id             uuid        NOT NULL REFERENCES event (event_id) ON DELETE RESTRICT,
    venue_id             uuid        NOT NULL REFERENCES venue (venue_id) ON DELETE RESTRICT,
    starts_at            timestamptz NOT NULL,
    on_sale_at           timestamptz NOT NULL,
    -- scheduled -> on_sale -> sold_out <-> on_sale; cancelled or ended at the end.
    status               text        NOT NULL DEFAULT 'scheduled',
    currency             text        NOT NULL,
    max_tickets_per_user integer     NOT NULL,
    -- How long a hold lasts before it expires and its seats go back on sale.
    hold_seconds         integer     NOT NULL,
    -- Cancellations are accepted until this many seconds before starts_at.
    cancel_cutoff_seconds integer    NOT NULL DEFAULT 86400,
    -- Waiting-room settings, mirrored into Redis by the waiting room.
    admit_per_second     integer     NOT NULL,
    max_active           integer     NOT NULL,
    prequeue_opens_at    timestamptz NOT NULL,
    waiting_room_paused  boolean     NOT NULL DEFAULT false,
    -- Seats in the show (= the venue's seat count, minus none: blocked seats still count).
    capacity             integer     NOT NULL,
    -- Seats sold; maintained by the booking-worker in the same transaction as the sale.
    sold_count           integer     NOT NULL DEFAULT 0,
    -- Fencing token: bumped by each booking-worker that becomes the show's writer; every batch
    -- re-checks it under FOR UPDATE, so a zombie writer can never commit.
    writer_epoch         bigint      NOT NULL DEFAULT 0,
    -- Bumped by each committed inventory change; the seat map's ETag and snapshot version.
    inventory_version    bigint      NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT show_status_known
        CHECK (status IN ('scheduled', 'on_sale', 'sold_out', 'ended', 'cancelled')),
    CONSTRAINT show_currency_iso CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT show_limit_sane CHECK (max_tickets_per_user BETWEEN 1 AND 100),
    CONSTRAINT show_hold_sane CHECK (hold_seconds BETWEEN 30 AND 3600),
    CONSTRAINT show_cancel_cutoff_sane CHECK (cancel_cutoff_seconds >= 0),
    CONSTRAINT show_admission_sane CHECK (admit_per_second > 0 AND max_active > 0),
    CONSTRAINT show_sale_before_start CHECK (on_sale_at < starts_at),
    CONSTRAINT show_prequeue_before_sale CHECK (prequeue_opens_at <= on_sale_at),
    -- Never sell more than the house holds: a bug in the writer becomes an error, not an oversale.
    CONSTRAINT show_sold_within_capacity CHECK (sold_count BETWEEN 0 AND capacity),
    CONSTRAINT show_epoch_non_negative CHECK (writer_epoch >= 0)
);

-- Serves "shows of an event" and the search's date filter (EXISTS on event_id and starts_at).
CREATE INDEX show_event_idx ON show (event_id, starts_at);
-- Serves the foreign key to venue (a venue cannot be deleted while shows use it).
CREATE INDEX show_venue_idx ON show (venue_id);
-- Serves the discovery of live shows by the admission controller and the booking-workers.
CREATE INDEX show_on_sale_idx ON show (on_sale_at) WHERE status IN ('scheduled', 'on_sale', 'sold_out');

-- Price of one tier for one show.
CREATE TABLE show_price (
    show_id     uuid    NOT NULL REFERENCES show (show_id) ON DELETE CASCADE,
    tier        text    NOT NULL,
    price_cents integer NOT NULL,
    -- One price per tier and show.
    PRIMARY KEY (show_id, tier),
    CONSTRAINT show_price_non_negative CHECK (price_cents >= 0)
);
