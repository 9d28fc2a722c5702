//! Who is connected to the shared-memory socket, and what they hold.
//!
//! Limits apply per client *process*, told apart by the connection's peer credentials
//! (`SO_PEERCRED`), not per connection: a process that opens nine connections shares one
//! lease cap and one connection allowance. The total over all processes is capped too:
//! connections by `server.shm_max_connections`, leased bytes by a fraction of the memory
//! tier (`server.shm_max_leased_fraction`), so leases can never pin the whole tier and new
//! misses can still be cached. A read reserves each block's bytes *before* leasing it, so
//! no single read can pass a cap; a refused reservation counts nothing.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{counter, gauge};

/// The caps in force.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Connections over all processes (`server.shm_max_connections`).
    pub max_connections: usize,
    /// Connections of one process (`server.shm_max_connections_per_process`).
    pub max_connections_per_process: usize,
    /// Leased bytes of one process (`server.shm_max_leased`, at most `max_leased_total`).
    pub max_leased_per_process: u64,
    /// Leased bytes of all processes (`server.shm_max_leased_fraction` of the memory tier).
    pub max_leased_total: u64,
}

impl ClientLimits {
    /// Limits from the config keys, for a memory tier of `tier_bytes`.
    pub fn new(server: &crate::config::ServerConfig, tier_bytes: u64) -> Self {
        let total = (tier_bytes as f64 * server.shm_max_leased_fraction) as u64;
        ClientLimits {
            max_connections: server.shm_max_connections,
            max_connections_per_process: server.shm_max_connections_per_process,
            max_leased_per_process: server.shm_max_leased.0.min(total),
            max_leased_total: total,
        }
    }
}

/// Why a connection is turned away.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionRefused {
    #[error(
        "the daemon serves {limit} shared-memory connections at once \
         (server.shm_max_connections); try again later or use gRPC"
    )]
    Total { limit: usize },
    #[error(
        "process {pid} already has {limit} shared-memory connections open \
         (server.shm_max_connections_per_process); close some"
    )]
    Process { pid: i32, limit: usize },
}

impl ConnectionRefused {
    fn reason(&self) -> &'static str {
        match self {
            ConnectionRefused::Total { .. } => "total",
            ConnectionRefused::Process { .. } => "process",
        }
    }
}

/// Why a read's bytes cannot be leased.
#[derive(Debug, thiserror::Error)]
pub enum LeaseRefused {
    #[error(
        "this read would lease {need} bytes but process {pid} holds {held} of its {limit} \
         (server.shm_max_leased): release earlier reads, read less at once, or read over gRPC"
    )]
    Process {
        pid: i32,
        need: u64,
        held: u64,
        limit: u64,
    },
    #[error(
        "this read would lease {need} bytes but clients hold {held} of the {limit} that may be \
         leased in total (server.shm_max_leased_fraction of the memory tier); read over gRPC"
    )]
    Total { need: u64, held: u64, limit: u64 },
}

#[derive(Debug, Default)]
struct Process {
    connections: usize,
    leased: u64,
    /// Held while one of the process's connections opens a loader: opens are admitted one
    /// at a time per process, so one process's retries queue behind each other only.
    opening: Arc<Mutex<()>>,
}

#[derive(Debug, Default)]
struct State {
    connections: usize,
    leased: u64,
    processes: HashMap<i32, Process>,
}

/// Every shared-memory client of the daemon.
#[derive(Debug)]
pub struct ShmClients {
    limits: ClientLimits,
    state: Mutex<State>,
}

impl ShmClients {
    /// No clients yet.
    pub fn new(limits: ClientLimits) -> Arc<Self> {
        Arc::new(ShmClients {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> ClientLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        loaderd_cache::sync::lock(&self.state)
    }

    /// Bytes leased by all clients now.
    pub fn leased(&self) -> u64 {
        self.lock().leased
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Admits a connection from process `pid`, or says which cap it passes (counted).
    pub fn connect(self: &Arc<Self>, pid: i32) -> Result<ClientConnection, ConnectionRefused> {
        let mut s = self.lock();
        let res = if s.connections >= self.limits.max_connections {
            Err(ConnectionRefused::Total {
                limit: self.limits.max_connections,
            })
        } else if s.processes.get(&pid).map_or(0, |p| p.connections)
            >= self.limits.max_connections_per_process
        {
            Err(ConnectionRefused::Process {
                pid,
                limit: self.limits.max_connections_per_process,
            })
        } else {
            s.connections += 1;
            s.processes.entry(pid).or_default().connections += 1;
            Ok(ClientConnection {
                clients: self.clone(),
                pid,
                leased: 0,
            })
        };
        if let Err(e) = &res {
            counter!("loaderd_shm_connections_refused_total", "reason" => e.reason()).increment(1);
        }
        gauge!("loaderd_shm_connections").set(s.connections as f64);
        res
    }
}

/// The peer's process id from `SO_PEERCRED`.
pub fn peer_pid(conn: impl AsFd) -> std::io::Result<i32> {
    let cred = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(std::io::Error::from)?;
    Ok(cred.pid())
}

/// One admitted connection; dropping it gives back its leases and its connection slot.
#[derive(Debug)]
pub struct ClientConnection {
    clients: Arc<ShmClients>,
    pid: i32,
    /// Bytes this connection holds leased (part of its process's and the total).
    leased: u64,
}

impl ClientConnection {
    /// The peer's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Counts `need` more leased bytes against the process and total caps, or refuses
    /// (counted) and counts nothing.
    pub fn reserve(&mut self, need: u64) -> Result<(), LeaseRefused> {
        let limits = self.clients.limits;
        let mut s = self.clients.lock();
        let held = s.processes.get(&self.pid).map_or(0, |p| p.leased);
        let refused = if held.saturating_add(need) > limits.max_leased_per_process {
            Some(LeaseRefused::Process {
                pid: self.pid,
                need,
                held,
                limit: limits.max_leased_per_process,
            })
        } else if s.leased.saturating_add(need) > limits.max_leased_total {
            Some(LeaseRefused::Total {
                need,
                held: s.leased,
                limit: limits.max_leased_total,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            let reason = match e {
                LeaseRefused::Process { .. } => "process",
                LeaseRefused::Total { .. } => "total",
            };
            counter!("loaderd_shm_lease_refusals_total", "reason" => reason).increment(1);
            return Err(e);
        }
        s.leased += need;
        if let Some(p) = s.processes.get_mut(&self.pid) {
            p.leased += need;
        }
        self.leased += need;
        gauge!("loaderd_shm_leased_bytes").set(s.leased as f64);
        Ok(())
    }

    /// Gives back `bytes` reserved earlier (released reads, or a reservation not used).
    pub fn give_back(&mut self, bytes: u64) {
        let bytes = bytes.min(self.leased);
        self.leased -= bytes;
        let mut s = self.clients.lock();
        s.leased = s.leased.saturating_sub(bytes);
        if let Some(p) = s.processes.get_mut(&self.pid) {
            p.leased = p.leased.saturating_sub(bytes);
        }
        gauge!("loaderd_shm_leased_bytes").set(s.leased as f64);
    }

    /// The lock that admits this process's loader opens one at a time.
    pub fn open_lock(&self) -> Arc<Mutex<()>> {
        self.clients
            .lock()
            .processes
            .get(&self.pid)
            .map(|p| p.opening.clone())
            .unwrap_or_default()
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.give_back(self.leased);
        let mut s = self.clients.lock();
        s.connections = s.connections.saturating_sub(1);
        if let Some(p) = s.processes.get_mut(&self.pid) {
            p.connections = p.connections.saturating_sub(1);
            if p.connections == 0 {
                s.processes.remove(&self.pid);
            }
        }
        gauge!("loaderd_shm_connections").set(s.connections as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(conns: usize, per: usize, leased: u64, total: u64) -> Arc<ShmClients> {
        ShmClients::new(ClientLimits {
            max_connections: conns,
            max_connections_per_process: per,
            max_leased_per_process: leased,
            max_leased_total: total,
        })
    }

    #[test]
    fn connections_are_capped_per_process_and_in_total() {
        let c = clients(3, 2, 10, 10);
        let a1 = c.connect(1).unwrap();
        let _a2 = c.connect(1).unwrap();
        assert!(matches!(
            c.connect(1),
            Err(ConnectionRefused::Process { pid: 1, limit: 2 })
        ));
        let _b = c.connect(2).unwrap();
        assert!(matches!(
            c.connect(3),
            Err(ConnectionRefused::Total { limit: 3 })
        ));
        drop(a1);
        assert!(c.connect(1).is_ok());
    }

    #[test]
    fn leases_are_shared_by_a_process_and_given_back() {
        let c = clients(8, 8, 10, 15);
        let mut a1 = c.connect(1).unwrap();
        let mut a2 = c.connect(1).unwrap();
        let mut b = c.connect(2).unwrap();
        a1.reserve(6).unwrap();
        assert!(matches!(
            a2.reserve(5),
            Err(LeaseRefused::Process { held: 6, .. })
        ));
        assert!(matches!(
            b.reserve(10),
            Err(LeaseRefused::Total { held: 6, .. })
        ));
        b.reserve(9).unwrap();
        assert!(matches!(b.reserve(1), Err(LeaseRefused::Total { .. })));
        drop(a1);
        assert_eq!(c.leased(), 9, "a closed connection gives its leases back");
        a2.reserve(4).unwrap();
        b.give_back(9);
        assert_eq!(c.leased(), 4);
        drop((a2, b));
        assert_eq!(c.leased(), 0);
    }
}
