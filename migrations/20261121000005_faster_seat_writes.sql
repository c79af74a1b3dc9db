-- Cheaper seat writes for the booking-worker, measured with `loadgen holds` and auto_explain
-- (README "The booking pipeline"):
--
-- 1. booking_seat -> show_seat was checked per inserted seat through an RI query on the
--    partitioned show_seat, about 75-100 us each (the check locks and prunes all sixteen
--    partitions every time): the largest single cost of a held seat. The seat's existence is
--    now checked against the (unpartitioned) seat table instead; that the seat belongs to the
--    booking's show is what the writer's in-memory inventory guarantees, and a seat that is held
--    or sold still has to be one of its booking's seats (show_seat_in_its_booking, deferred), so
--    show_seat and booking_seat cannot tell different stories about a live seat.
ALTER TABLE booking_seat DROP CONSTRAINT booking_seat_show_seat;
ALTER TABLE booking_seat
    ADD CONSTRAINT booking_seat_seat FOREIGN KEY (seat_id) REFERENCES seat (seat_id);

-- 2. Nothing reads show_seat by booking (a booking's seats are read from booking_seat, whose
--    primary key starts with booking_id), and this index made every status change of a seat a
--    non-HOT update: a new entry in all three indexes of show_seat per held seat.
DROP INDEX show_seat_booking_idx;

-- 3. Room on each page for the new version of a row, so seat updates stay HOT (heap-only: no
--    index entries at all). Applies to pages written from now on, i.e. to shows created after
--    this migration.
DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format('ALTER TABLE show_seat_p%s SET (fillfactor = 70)', i);
    END LOOP;
END
$$;
