'use strict'
// The public API: EventEmitter classes over the native hub and edge. The native side reports
// events through one callback, translated here; its errors already carry their `code` and
// pass through as they are.
const { EventEmitter } = require('node:events')
const native = loadNative()

/** The generated loader, with an error that says which platforms have prebuilt binaries. */
function loadNative() {
  try {
    return require('./binding.js')
  } catch (cause) {
    const err = new Error(
      `@serve.zone/remoteingress has no native addon for ${process.platform}-${process.arch} here. ` +
        'Prebuilt addons exist for Linux x64 and arm64 with glibc 2.34 or newer; elsewhere, build ' +
        'from a source checkout with Rust installed (npm run build). The cause has the details.',
      { cause },
    )
    err.code = 'ERR_NO_NATIVE_ADDON'
    throw err
  }
}

/** Shared lifecycle: the native object, event dispatch, and keeping Node alive while running. */
class NativeRunner extends EventEmitter {
  #native
  #untilStopped = null
  // Handed to the native side on start() only: it holds the callback strongly while running
  // (keeping this object alive, like a listening net.Server) and lets go of it on stop().
  // A call means "events are queued": one call collects a whole batch.
  #onEvent = () => this.#dispatchQueued()

  constructor(NativeClass) {
    super()
    this.#native = new NativeClass()
  }

  #dispatchQueued() {
    for (const { type, ...payload } of JSON.parse(this.#native.takeEvents())) {
      try {
        this.emit(type, payload)
      } catch (err) {
        // As uncaught as a throwing listener always is, without losing the rest of the batch.
        process.nextTick(() => {
          throw err
        })
      }
    }
  }

  get _native() {
    return this.#native
  }

  async start(config) {
    await this.#native.start(this.#onEvent, config)
    // A pending native promise keeps the event loop alive, like a listening net.Server; it
    // settles in stop(), after which nothing holds the process.
    this.#untilStopped = this.#native.waitForStop().catch(() => {})
  }

  async stop(options) {
    await this.#native.stop(options)
    await this.#untilStopped
    this.#untilStopped = null
  }

  // async: a bad argument rejects, as every other error here, rather than throwing.
  async getStatus() {
    return this.#native.getStatus()
  }

  /** Prometheus text exposition of the counters; empty when not running. */
  async getMetrics() {
    return this.#native.getMetrics()
  }

  get running() {
    return this.#native.running
  }
}

/** Sent by the native hub only while something listens: one per connection is costly. */
const PER_STREAM_EVENTS = ['streamOpened', 'streamClosed']

class RemoteIngressHub extends NativeRunner {
  #trackingListeners = true
  #onNewListener = (event) => {
    if (PER_STREAM_EVENTS.includes(event)) this._native.setPerStreamEvents(true)
  }
  #onRemoveListener = (event, listener) => {
    if (listener === this.#onNewListener) {
      // removeAllListeners() took the tracking away: from now on, always send.
      this.#trackingListeners = false
      this._native.setPerStreamEvents(true)
    } else if (this.#trackingListeners && PER_STREAM_EVENTS.includes(event)) {
      this._native.setPerStreamEvents(PER_STREAM_EVENTS.some((name) => this.listenerCount(name) > 0))
    }
  }

  constructor() {
    super(native.NativeHub)
    this.on('newListener', this.#onNewListener)
    this.on('removeListener', this.#onRemoveListener)
  }

  /** Starts listening for edges; resolves once the tunnel port is bound. */
  start(config = {}) {
    return super.start(config)
  }

  /**
   * Stops. With `{ graceMs }`, drains first: no new edges, GOAWAY to each edge, and open
   * connections run until they end or the grace is over.
   */
  async stop(options) {
    return super.stop(options)
  }

  /** Replaces the list of edges allowed to connect; connected edges get changes at once. */
  async updateAllowedEdges(edges) {
    return this._native.updateAllowedEdges(edges)
  }
}

class RemoteIngressEdge extends NativeRunner {
  constructor() {
    super(native.NativeEdge)
  }

  /** Starts the edge; resolves once the first connection attempt is under way. */
  start(config) {
    return super.start(config)
  }
}

function encodeConnectionToken(data) {
  return native.encodeConnectionToken(data)
}

function decodeConnectionToken(token) {
  if (typeof token !== 'string') {
    const err = new Error('token must be a string')
    err.code = 'ERR_INVALID_TOKEN'
    throw err
  }
  const decoded = native.decodeConnectionToken(token)
  if (decoded.hubFingerprint == null) delete decoded.hubFingerprint
  return decoded
}

/** A self-signed hub certificate and key (PEM) plus its fingerprint, for `tls` and pinning. */
function generateHubCertificate() {
  return native.generateHubCertificate()
}

module.exports = {
  generateHubCertificate,
  RemoteIngressHub,
  RemoteIngressEdge,
  encodeConnectionToken,
  decodeConnectionToken,
}
