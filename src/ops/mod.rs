//! Running the service among other processes: the scrape step of `/metrics` (above the
//! store and the journal it reads) and the signals to and from a supervisor.

pub mod scrape;
pub mod signals;
