//! vhost-gpu: a virtio-gpu device served over vhost-user.
//!
//! Data flows one way: socket ([`vhost_user`]) → queue → decode ([`protocol`]) → device state
//! ([`device`]) → renderer (`virgl-bridge`) → reply → used ring → display ([`display`],
//! and PNG files with [`capture`]).

pub mod alloc;
pub mod capture;
pub mod cli;
pub mod config;
pub mod damage;
pub mod device;
pub mod display;
pub mod edid;
pub mod fences;
pub mod logging;
pub mod modes;
pub mod outbox;
pub mod privileges;
pub mod probe;
pub mod protocol;
pub mod ratelimit;
pub mod render_server;
pub mod sandbox;
pub mod screens;
pub mod shader_cache;
pub mod socket;
pub mod vhost_user;
pub mod vnc;
