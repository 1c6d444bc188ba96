-- Statuses of the admin API's background tasks (room deletions, history purges, user
-- redactions), so that any process of the server answers a status query, whichever one
-- runs the task (docs/scaling.md). Kept a day, as Synapse keeps its scheduled tasks.
CREATE TABLE admin_task_statuses (
    task_id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    status_json TEXT NOT NULL,
    task_json TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX admin_task_statuses_resource ON admin_task_statuses (action, resource_id);
CREATE INDEX admin_task_statuses_updated ON admin_task_statuses (updated_ms);
