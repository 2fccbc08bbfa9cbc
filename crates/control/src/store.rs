//! Persistent control-plane state in the same embedded SQLite database as the model registry:
//! services, endpoints, credentials, and the pids of replica processes (so a control plane that
//! crashed can adopt or stop what it left behind). Every change is one transaction ([`Store::write`]).

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
    #[error("{kind} '{name}' was not stored: no such record")]
    Missing { kind: &'static str, name: String },
}

/// The control plane's tables.
pub struct Store {
    conn: Connection,
}

/// One write transaction of the store; see [`Store::write`].
pub struct Txn<'a> {
    tx: rusqlite::Transaction<'a>,
}

/// Reads, the same on the store and inside a write transaction (where they see the
/// transaction's own changes and nothing another writer does meanwhile).
pub trait Reads {
    fn conn(&self) -> &Connection;

    fn services(&self) -> Result<Vec<ServiceSpec>, StoreError> {
        all(self.conn(), "SELECT spec FROM control_services ORDER BY name")
    }

    fn service(&self, name: &str) -> Result<Option<ServiceSpec>, StoreError> {
        one(self.conn(), "SELECT spec FROM control_services WHERE name = ?1", name)
    }

    fn endpoints(&self) -> Result<Vec<EndpointSpec>, StoreError> {
        all(self.conn(), "SELECT spec FROM control_endpoints ORDER BY name")
    }

    fn endpoint(&self, name: &str) -> Result<Option<EndpointSpec>, StoreError> {
        one(self.conn(), "SELECT spec FROM control_endpoints WHERE name = ?1", name)
    }

    fn keys(&self, kind: &str, name: &str) -> Result<Option<Keys>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT primary_key, secondary_key FROM control_credentials WHERE owner = ?1",
                params![owner(kind, name)],
                |row| Ok(Keys { primary_key: row.get(0)?, secondary_key: row.get(1)? }),
            )
            .optional()?)
    }
}

impl Reads for Store {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

impl Reads for Txn<'_> {
    fn conn(&self) -> &Connection {
        &self.tx
    }
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

    /// Runs `change` as one transaction: it commits when `change` returns `Ok` and leaves nothing
    /// changed otherwise. The transaction is IMMEDIATE: it takes the database's write lock before
    /// `change` reads anything, so what `change` decides on (a name is free, the versions it
    /// edits) cannot be changed by another writer (this process's other requests, or another
    /// process on the same database such as `sluice model delete`) before it commits. Writers
    /// are thereby applied one after another; a change that no longer fits what it finds is
    /// refused by `change` itself (409, naming the conflict).
    pub fn write<T, E: From<StoreError>>(&mut self, change: impl FnOnce(&Txn<'_>) -> Result<T, E>) -> Result<T, E> {
        let tx =
            self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let txn = Txn { tx };
        let value = change(&txn)?;
        txn.tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Remembers a replica process, so a later control plane can find it if this one dies.
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

    /// Replica processes recorded by an earlier run. They stay recorded until they are gone: a
    /// control plane that dies again before it has adopted or stopped them leaves them to the
    /// next one.
    pub fn replica_pids(&self) -> Result<Vec<(u32, String)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT pid, service FROM control_replica_processes")?;
        let pids = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(pids)
    }
}

impl Txn<'_> {
    /// Stores a new service with its credentials. The caller has checked that the name is free
    /// in this transaction; a plain INSERT makes sure nothing is ever overwritten regardless.
    pub fn insert_service(&self, spec: &ServiceSpec, keys: &Keys) -> Result<(), StoreError> {
        self.insert("service", &spec.name, spec, keys)
    }

    /// Stores a new endpoint with its credentials; as [`Txn::insert_service`].
    pub fn insert_endpoint(&self, spec: &EndpointSpec, keys: &Keys) -> Result<(), StoreError> {
        self.insert("endpoint", &spec.name, spec, keys)
    }

    /// Replaces a stored service; with `keys`, also its credentials.
    pub fn update_service(&self, spec: &ServiceSpec, keys: Option<&Keys>) -> Result<(), StoreError> {
        self.update("service", &spec.name, spec, keys)
    }

    /// Replaces a stored endpoint.
    pub fn update_endpoint(&self, spec: &EndpointSpec) -> Result<(), StoreError> {
        self.update("endpoint", &spec.name, spec, None)
    }

    fn insert(
        &self,
        kind: &'static str,
        name: &str,
        spec: &impl serde::Serialize,
        keys: &Keys,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            &format!("INSERT INTO {} (name, spec) VALUES (?1, ?2)", table(kind)),
            params![name, serde_json::to_string(spec)?],
        )?;
        self.set_keys(kind, name, keys)
    }

    fn update(
        &self,
        kind: &'static str,
        name: &str,
        spec: &impl serde::Serialize,
        keys: Option<&Keys>,
    ) -> Result<(), StoreError> {
        let n = self.tx.execute(
            &format!("UPDATE {} SET spec = ?2 WHERE name = ?1", table(kind)),
            params![name, serde_json::to_string(spec)?],
        )?;
        if n == 0 {
            return Err(StoreError::Missing { kind, name: name.to_owned() });
        }
        if let Some(keys) = keys {
            self.set_keys(kind, name, keys)?;
        }
        Ok(())
    }

    /// Deletes a service or endpoint (`kind`) and its credentials.
    pub fn delete(&self, kind: &str, name: &str) -> Result<bool, StoreError> {
        let n = self.tx.execute(&format!("DELETE FROM {} WHERE name = ?1", table(kind)), params![name])?;
        self.tx.execute("DELETE FROM control_credentials WHERE owner = ?1", params![owner(kind, name)])?;
        Ok(n > 0)
    }

    pub fn set_keys(&self, kind: &str, name: &str, keys: &Keys) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO control_credentials (owner, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
            params![owner(kind, name), keys.primary_key, keys.secondary_key],
        )?;
        Ok(())
    }

    /// Whether the registry still holds model version `name:version` (a concurrent
    /// `sluice model delete` may have removed it since it was resolved).
    pub fn has_model_version(&self, name: &str, version: u32) -> Result<bool, StoreError> {
        Ok(sluice_registry::has_version(&self.tx, name, version)?)
    }
}

/// The services whose models include `name:version`, read from `conn` (the data directory's
/// database, which the registry shares). `sluice model delete` calls this inside the registry's
/// delete transaction, so no service can start using the version between the check and the
/// delete: the registry stays ignorant of services, the control plane of how deletes work.
pub fn services_using_model(conn: &Connection, name: &str, version: u32) -> rusqlite::Result<Vec<String>> {
    let exists = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'control_services'", [], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        // No control plane has run with this data directory.
        return Ok(Vec::new());
    }
    let reference = format!("{name}:{version}");
    let mut stmt = conn.prepare("SELECT name, spec FROM control_services ORDER BY name")?;
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
    let mut users = Vec::new();
    for row in rows {
        let (service, spec) = row?;
        // A spec that does not parse cannot be vouched for: count it as a user, so nothing a
        // service might run is deleted.
        let uses = serde_json::from_str::<ServiceSpec>(&spec).map_or(true, |s| s.models.contains(&reference));
        if uses {
            users.push(service);
        }
    }
    Ok(users)
}

fn all<T: serde::de::DeserializeOwned>(conn: &Connection, sql: &str) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    rows.map(|r| Ok(serde_json::from_str(&r?)?)).collect()
}

fn one<T: serde::de::DeserializeOwned>(conn: &Connection, sql: &str, name: &str) -> Result<Option<T>, StoreError> {
    let text: Option<String> = conn.query_row(sql, params![name], |row| row.get(0)).optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// The table of a kind of resource: services, or else endpoints.
fn table(kind: &str) -> &'static str {
    if kind == "service" { "control_services" } else { "control_endpoints" }
}

fn owner(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}
