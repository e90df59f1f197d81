// Lifecycle: starting and stopping a hub and an edge many times in one process leaves no file
// descriptors, threads or memory behind, and stop() resolves only once its sockets are closed.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import v8 from 'node:v8'
import vm from 'node:vm'
import {
  SECRET,
  behaviours,
  connect,
  edgeConfig,
  readBytes,
  startConnectedEdge,
  startHub,
  startTarget,
  stopQuietly,
  waitFor,
} from './helpers.mjs'

const CYCLES = 200
const openFds = () => fs.readdirSync('/proc/self/fd').length
const threads = () => fs.readdirSync('/proc/self/task').length
const rssMiB = () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) / 1024
/**
 * Growth allowed over the second half of the cycles. RSS moves in steps of several MiB as
 * malloc's per-thread arenas grow (3.9 to 11.4 MiB measured over 100 cycles), so this only
 * catches a gross leak: about 320 KiB per cycle, such as a whole hub or edge left behind.
 */
const SECOND_HALF_RSS_GROWTH_MIB = 32

/** Starts a hub and an edge, carries one connection, stops both; returns the stopped pair. */
async function cycle(target) {
  const { hub, hubPort } = await startHub([{ id: 'cycler', secret: SECRET, listenPorts: [target.port] }])
  let edge
  try {
    ;({ edge } = await startConnectedEdge(edgeConfig(hubPort, 'cycler')))
    const client = await connect(target.port)
    const echoed = readBytes(client, 5)
    client.write('cycle')
    assert.equal((await echoed).toString(), 'cycle')
    client.destroy()
  } finally {
    await stopQuietly(edge, hub)
  }
  return { hub, edge }
}

test(`${CYCLES} start/stop cycles of a hub and an edge leak no file descriptors, threads or memory`, { timeout: 600_000 }, async (t) => {
  const target = await startTarget(behaviours.echo)
  try {
    // Warm-up: the runtime's worker threads and Node's own handles appear on first use.
    for (let i = 0; i < 3; i++) await cycle(target)
    const before = { fds: openFds(), threads: threads() }
    for (let i = 0; i < CYCLES / 2; i++) await cycle(target)
    const halfway = rssMiB()
    for (let i = 0; i < CYCLES / 2; i++) await cycle(target)
    const end = rssMiB()
    // Sockets closed by the client side may take a moment to leave the table; the count must
    // come back, not stay up (bounded: a leak stays up, and the assertions below name it).
    let after
    await waitFor(
      () => {
        after = { fds: openFds(), threads: threads() }
        return after.fds <= before.fds && after.threads <= before.threads
      },
      { intervalMs: 100, what: 'the descriptor and thread counts to come back' },
    ).catch(() => {})
    t.diagnostic(`${CYCLES} cycles: fds ${before.fds} -> ${after.fds}, threads ${before.threads} -> ${after.threads}, RSS ${halfway.toFixed(1)} MiB halfway -> ${end.toFixed(1)} MiB`)
    assert.ok(after.fds <= before.fds, `file descriptors: ${before.fds} before, ${after.fds} after ${CYCLES} cycles`)
    assert.ok(after.threads <= before.threads, `threads: ${before.threads} before, ${after.threads} after ${CYCLES} cycles`)
    assert.ok(end - halfway < SECOND_HALF_RSS_GROWTH_MIB, `RSS grew ${(end - halfway).toFixed(1)} MiB over the last ${CYCLES / 2} cycles`)
  } finally {
    await stopQuietly(target)
  }
})

test('a stopped hub and edge can be garbage-collected', { timeout: 120_000 }, async () => {
  // The native side must not hold a stopped hub or edge (its event callback closes over the
  // JavaScript object): each one held leaked ~1.7 KiB of native heap plus the object itself.
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc')
  const target = await startTarget(behaviours.echo)
  let collected = 0
  const registry = new FinalizationRegistry(() => collected++)
  const ROUNDS = 10
  try {
    for (let i = 0; i < ROUNDS; i++) {
      const { hub, edge } = await cycle(target)
      registry.register(hub, 'hub')
      registry.register(edge, 'edge')
    }
    // Finalizers run on a later turn after a collection, and the native side lets go of a
    // stopped object's callback on a later turn too: collect and look again until enough were
    // (bounded; one held for good never is, and the assertion below says how many were).
    await waitFor(
      () => {
        gc()
        return collected >= ROUNDS
      },
      { intervalMs: 50, what: 'stopped hubs and edges to be collected' },
    ).catch(() => {})
    // At least half (unfixed, none ever was): the last ones may still be reachable for a while.
    assert.ok(collected >= ROUNDS, `${collected} of ${2 * ROUNDS} stopped hubs and edges were collected`)
  } finally {
    await stopQuietly(target)
  }
})
