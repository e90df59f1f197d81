// Timing guards: GUARD_MS (the hang bound of every wait), withTimeout, waitFor, once,
// recordEvents, eventLoopLag (how late this process's callbacks run right now) and quietWindow.
import { monitorEventLoopDelay } from 'node:perf_hooks'

/**
 * How long a bounded wait gives a condition before it fails the test. It only guards against
 * hanging: a loaded or slow machine may need seconds for what takes milliseconds here, so it is
 * generous, and no test asserts that anything happened within it.
 */
export const GUARD_MS = 20_000

/** Rejects with `what` if `promise` has not settled within `timeoutMs`. */
export function withTimeout(promise, timeoutMs, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Polls `predicate` (may be async) until it returns truthy; returns that value. Bounded. */
export async function waitFor(predicate, { timeoutMs = GUARD_MS, intervalMs = 20, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let lastError
  for (let attempt = 0; attempt < 100000; attempt++) {
    try {
      const value = await predicate()
      if (value) return value
      lastError = undefined
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) break
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
  const detail = lastError ? ` (last error: ${lastError.message})` : ''
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`)
}

/**
 * Resolves with the first payload of `event` (that passes `filter`), rejecting after
 * `timeoutMs` with a message naming the event.
 */
export function once(emitter, event, timeoutMs = GUARD_MS, filter = () => true) {
  let listener
  const fired = new Promise((resolve) => {
    listener = (payload) => {
      if (!filter(payload)) return
      emitter.off(event, listener)
      resolve(payload)
    }
    emitter.on(event, listener)
  })
  return withTimeout(fired, timeoutMs, `event '${event}'`).finally(() => emitter.off(event, listener))
}

/**
 * Watches this process's event loop for stalls (a timer firing late): how late a callback of
 * this process can run on this machine right now. `maxMs()` is the worst delay seen since
 * start; timing checks widen their tolerance by it, so a loaded machine makes them weaker,
 * never red.
 */
export function eventLoopLag() {
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  histogram.enable()
  return {
    maxMs: () => histogram.max / 1e6,
    stop: () => histogram.disable(),
  }
}

/** Records every emitted payload of the named events, in order: [{ event, payload }]. */
export function recordEvents(emitter, events) {
  const log = []
  for (const event of events) emitter.on(event, (payload) => log.push({ event, payload }))
  log.of = (event) => log.filter((e) => e.event === event).map((e) => e.payload)
  return log
}

/**
 * A bounded wait for "nothing more happens": only for use after a positive control showed the
 * path works, so a silent failure cannot pass for an absent datagram. On a slow machine the
 * window covers less, so it can only make a check weaker there, never fail it.
 */
export function quietWindow(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
