// Shared helpers for the end-to-end tests, one module per concern under helpers/ (each module's
// top comment says what it holds). This file only re-exports them, so tests and bench/attack.mjs
// import everything from './helpers.mjs'. Everything talks to 127.0.0.0/8 only: targets on
// 127.0.0.1, edge listeners on 127.0.0.2.
export * from './helpers/env.mjs' // the package under test, its addon, the loopback addresses
export * from './helpers/timing.mjs' // GUARD_MS, withTimeout, waitFor, once, eventLoopLag, quietWindow
export * from './helpers/proxy.mjs' // PROXY v1/v2 header parsing, v2 datagram headers
export * from './helpers/tcp.mjs' // TCP targets and endless server, client sockets, readers
export * from './helpers/tunnel.mjs' // hub and edge start/stop, edgeConfig, TEST_TRANSPORT
export * from './helpers/udp.mjs' // UDP target and client
export * from './helpers/raw.mjs' // hand-driven edge and hub speaking the tunnel protocol
export * from './helpers/stun.mjs' // STUN messages, fake servers, relay, coturn
export * from './helpers/system.mjs' // executables, free ports, fd and thread counts
