DROP TABLE sync_sessions;
