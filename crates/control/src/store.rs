//! Persistent control-plane state in the same embedded SQLite database as the model registry:
//! services, endpoints, credentials, and the pids of replica processes (so a control plane that
//! crashed can replace what it left behind). Every change is one transaction.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{EndpointSpec, Keys, ServiceSpec};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS control_services (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control_endpoints (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
-- keys of services and endpoints; owner is 'service:NAME' or 'endpoint:NAME'
CREATE TABLE IF NOT EXISTS control_credentials (
    owner TEXT PRIMARY KEY,
    primary_key TEXT NOT NULL,
    secondary_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS control_replica_processes (
    pid INTEGER PRIMARY KEY,
    service TEXT NOT NULL
);
";

/// Failures of the store; SQLite errors are internal, the rest name the resource.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// The control plane's tables.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens the database under `home`, creating the tables.
    pub fn open(home: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(home.join("sluice.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a change the API confirmed survives a crash or power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    pub fn services(&self) -> Result<Vec<ServiceSpec>, StoreError> {
        self.all("SELECT spec FROM control_services ORDER BY name")
    }

    pub fn service(&self, name: &str) -> Result<Option<ServiceSpec>, StoreError> {
        self.one("SELECT spec FROM control_services WHERE name = ?1", name)
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointSpec>, StoreError> {
        self.all("SELECT spec FROM control_endpoints ORDER BY name")
    }

    pub fn endpoint(&self, name: &str) -> Result<Option<EndpointSpec>, StoreError> {
        self.one("SELECT spec FROM control_endpoints WHERE name = ?1", name)
    }

    /// Inserts or replaces a service; with `keys`, also stores its new credentials, atomically.
    pub fn put_service(&mut self, spec: &ServiceSpec, keys: Option<&Keys>) -> Result<(), StoreError> {
        self.put("service", &spec.name, spec, keys)
    }

    /// Inserts or replaces an endpoint; with `keys`, also stores its new credentials, atomically.
    pub fn put_endpoint(&mut self, spec: &EndpointSpec, keys: Option<&Keys>) -> Result<(), StoreError> {
        self.put("endpoint", &spec.name, spec, keys)
    }

    fn put(
        &mut self,
        kind: &str,
        name: &str,
        spec: &impl serde::Serialize,
        keys: Option<&Keys>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!("INSERT OR REPLACE INTO {} (name, spec) VALUES (?1, ?2)", table(kind)),
            params![name, serde_json::to_string(spec)?],
        )?;
        if let Some(keys) = keys {
            put_keys(&tx, &owner(kind, name), keys)?;
        }
        Ok(tx.commit()?)
    }

    /// Deletes a service or endpoint (`kind`) and its credentials.
    pub fn delete(&mut self, kind: &str, name: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(&format!("DELETE FROM {} WHERE name = ?1", table(kind)), params![name])?;
        tx.execute("DELETE FROM control_credentials WHERE owner = ?1", params![owner(kind, name)])?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn keys(&self, kind: &str, name: &str) -> Result<Option<Keys>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT primary_key, secondary_key FROM control_credentials WHERE owner = ?1",
                params![owner(kind, name)],
                |row| Ok(Keys { primary_key: row.get(0)?, secondary_key: row.get(1)? }),
            )
            .optional()?)
    }

    pub fn set_keys(&mut self, kind: &str, name: &str, keys: &Keys) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        put_keys(&tx, &owner(kind, name), keys)?;
        Ok(tx.commit()?)
    }

    /// Remembers a replica process, so a later control plane can stop it if this one dies.
    pub fn add_replica_pid(&self, pid: u32, service: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO control_replica_processes (pid, service) VALUES (?1, ?2)",
            params![pid, service],
        )?;
        Ok(())
    }

    pub fn remove_replica_pid(&self, pid: u32) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM control_replica_processes WHERE pid = ?1", params![pid])?;
        Ok(())
    }

    /// Replica processes recorded by an earlier run, and forgets them.
    pub fn take_replica_pids(&mut self) -> Result<Vec<(u32, String)>, StoreError> {
        let tx = self.conn.transaction()?;
        let pids = {
            let mut stmt = tx.prepare("SELECT pid, service FROM control_replica_processes")?;
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<Vec<_>, _>>()?
        };
        tx.execute("DELETE FROM control_replica_processes", [])?;
        tx.commit()?;
        Ok(pids)
    }

    fn all<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        rows.map(|r| Ok(serde_json::from_str(&r?)?)).collect()
    }

    fn one<T: serde::de::DeserializeOwned>(&self, sql: &str, name: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.conn.query_row(sql, params![name], |row| row.get(0)).optional()?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }
}

/// The table of a kind of resource: services, or else endpoints.
fn table(kind: &str) -> &'static str {
    if kind == "service" { "control_services" } else { "control_endpoints" }
}

fn owner(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

fn put_keys(tx: &rusqlite::Transaction<'_>, owner: &str, keys: &Keys) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR REPLACE INTO control_credentials (owner, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
        params![owner, keys.primary_key, keys.secondary_key],
    )?;
    Ok(())
}
