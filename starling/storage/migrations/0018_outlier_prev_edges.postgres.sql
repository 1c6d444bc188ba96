-- Prev edges for outliers too (until now only timeline events had them): an outlier is a
-- known descendant of the events it cites, so none of those may become a forward
-- extremity when it is later pulled into the timeline. Shared with
-- 0018_outlier_prev_edges.sqlite.sql except for reading prev_events out of the JSON
-- (room versions 1 and 2 list [event_id, hashes] pairs).
INSERT INTO event_edges (event_nid, prev_event_id)
SELECT event_nid, prev_event_id FROM (
    SELECT e.event_nid AS event_nid,
           CASE WHEN jsonb_typeof(p.value) = 'array' THEN p.value ->> 0
                WHEN jsonb_typeof(p.value) = 'string' THEN p.value #>> '{}' END AS prev_event_id
    FROM events e
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(e.json::jsonb -> 'prev_events') = 'array'
             THEN e.json::jsonb -> 'prev_events' ELSE '[]'::jsonb END
    ) AS p(value)
    WHERE e.outlier
) p WHERE prev_event_id IS NOT NULL
ON CONFLICT DO NOTHING;
