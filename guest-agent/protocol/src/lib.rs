//! The husk agent API shared by the shim (client) and the agent (server).
