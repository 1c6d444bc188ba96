-- Prev edges for outliers too (until now only timeline events had them): an outlier is a
-- known descendant of the events it cites, so none of those may become a forward
-- extremity when it is later pulled into the timeline. Shared with
-- 0018_outlier_prev_edges.postgres.sql except for reading prev_events out of the JSON
-- (room versions 1 and 2 list [event_id, hashes] pairs).
INSERT OR IGNORE INTO event_edges (event_nid, prev_event_id)
SELECT event_nid, prev_event_id FROM (
    SELECT e.event_nid AS event_nid,
           CASE WHEN j.type = 'array' THEN json_extract(j.value, '$[0]')
                WHEN j.type = 'text' THEN j.value END AS prev_event_id
    FROM events e, json_each(e.json, '$.prev_events') j
    WHERE e.outlier
) p WHERE prev_event_id IS NOT NULL;
