//! `ServiceACL`: who may call whom inside a DeviceHub.
