#!/usr/bin/env node
// The benchmark: the same loopback workloads directly and through the tunnel, in one run.
//
//   npm run bench [-- --seconds 5 --idle 10000]
//
// Load comes from iperf3 and wrk (native tools, so the generator is not the bottleneck); the
// target is nginx (HTTP) and iperf3's server on 127.0.0.1; the edge listens on 127.0.0.2 with
// the same ports. Hub and edge run as separate CLI processes so their memory can be read.
// Everything is bounded in time and stops by itself; only processes started here are ended.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'

const { values: opts } = parseArgs({
  options: { seconds: { type: 'string', default: '5' }, idle: { type: 'string', default: '10000' } },
})
const SECONDS = Number(opts.seconds)
const IDLE = Number(opts.idle)
const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
const CLI = path.join(ROOT, 'bin', 'remoteingress.js')
const WORK = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-bench-'))
const PORT = { iperf: 15301, http: 18181, hub: 18543 }
const started = []

function need(tool, pkg) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0) return
  console.error(`installing ${pkg}...`)
  const apt = spawnSync('sh', ['-c', `DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${pkg} || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${pkg})`], { stdio: 'inherit' })
  if (apt.status !== 0) throw new Error(`${tool} is needed (apt-get install ${pkg})`)
}

function start(command, args, name) {
  const child = spawn('bash', ['-c', 'ulimit -n 65535 2>/dev/null || ulimit -n 16384; exec "$@"', command, command, ...args], {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(WORK, `${name}.log`), 'w')],
  })
  started.push(child)
  return child
}

function run(command, args, timeoutSeconds) {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: timeoutSeconds * 1000 })
  if (result.error) throw result.error
  return result.stdout
}

async function waitForPort(host, port) {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host, port }, () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${host}:${port} never answered`)
}

function iperf(host, parallel) {
  const out = JSON.parse(run('iperf3', ['-c', host, '-p', String(PORT.iperf), '-t', String(SECONDS), '-P', String(parallel), '-J'], SECONDS + 30))
  if (out.error) throw new Error(out.error)
  return out.end.sum_received.bits_per_second / 1e9
}

const UNIT_MS = { us: 1e-3, ms: 1, s: 1000 }
function wrk(host, { close = false, connections = 10, seconds = SECONDS } = {}) {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', `http://${host}:${PORT.http}/1k.txt`]
  if (close) args.unshift('-H', 'Connection: close')
  const out = run('wrk', args, seconds + 30)
  const percentile = (q) => {
    const m = new RegExp(`^\\s+${q}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(out)
    return m ? Number(m[1]) * UNIT_MS[m[2]] : NaN
  }
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN)
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  return { rps, p50: percentile(50), p99: percentile(99), errors: errors ? errors.slice(1).reduce((a, b) => a + Number(b), 0) : 0 }
}

async function p99UnderBulk(host) {
  const bulk = spawn('iperf3', ['-c', host, '-p', String(PORT.iperf), '-t', String(SECONDS + 2)], { stdio: 'ignore' })
  started.push(bulk)
  await new Promise((r) => setTimeout(r, 1000)) // let the bulk transfer reach full speed
  const result = wrk(host, { connections: 10 })
  await new Promise((resolve) => { bulk.once('exit', resolve); setTimeout(() => { bulk.kill(); resolve() }, (SECONDS + 10) * 1000) })
  return result.p99
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) : NaN
}

/** Opens `count` idle connections through `host` (each sends one request so a stream exists). */
async function idleKiBPerConnection(host, pids) {
  const before = pids.reduce((sum, pid) => sum + rssKiB(pid), 0)
  const sockets = []
  const deadline = Date.now() + 120_000
  for (let i = 0; i < IDLE && Date.now() < deadline; i += 100) {
    const batch = []
    for (let j = i; j < Math.min(IDLE, i + 100); j++) {
      batch.push(new Promise((resolve) => {
        const s = net.connect({ host, port: PORT.http }, () => {
          s.write(`GET /1k.txt HTTP/1.1\r\nHost: bench\r\n\r\n`)
        })
        s.once('data', () => resolve(s))
        s.on('error', () => resolve(null))
      }))
    }
    sockets.push(...(await Promise.all(batch)))
  }
  const open = sockets.filter(Boolean)
  await new Promise((r) => setTimeout(r, 1000))
  const after = pids.reduce((sum, pid) => sum + rssKiB(pid), 0)
  for (const s of open) s.destroy()
  return { perConnection: (after - before) / Math.max(open.length, 1), open: open.length }
}

async function measure(name, host, pids) {
  console.error(`measuring ${name}...`)
  const row = { name }
  row.tcp1 = iperf(host, 1)
  row.tcp8 = iperf(host, 8)
  const keepAlive = wrk(host)
  Object.assign(row, { rps: keepAlive.rps, p50: keepAlive.p50, p99: keepAlive.p99 })
  row.connPerSec = wrk(host, { close: true }).rps
  row.p99Bulk = await p99UnderBulk(host)
  if (pids.length) Object.assign(row, await idleKiBPerConnection(host, pids))
  return row
}

function table(rows) {
  const cols = [
    ['tcp 1 stream Gbit/s', (r) => r.tcp1.toFixed(2)],
    ['tcp 8 streams Gbit/s', (r) => r.tcp8.toFixed(2)],
    ['keep-alive req/s', (r) => Math.round(r.rps)],
    ['p50 ms', (r) => r.p50.toFixed(3)],
    ['p99 ms', (r) => r.p99.toFixed(3)],
    ['new conns/s', (r) => Math.round(r.connPerSec)],
    ['p99 ms under bulk', (r) => r.p99Bulk.toFixed(3)],
    [`idle KiB/conn (${IDLE})`, (r) => (r.perConnection === undefined ? '-' : `${r.perConnection.toFixed(1)}`)],
  ]
  const lines = [`| workload | ${rows.map((r) => r.name).join(' | ')} | tunnel / direct |`, `|---|${rows.map(() => '---').join('|')}|---|`]
  for (const [label, cell] of cols) {
    const [direct, tunnel] = rows
    const ratio = label.startsWith('idle') ? '' : (Number(cell(tunnel)) / Number(cell(direct))).toFixed(2)
    lines.push(`| ${label} | ${rows.map(cell).join(' | ')} | ${ratio} |`)
  }
  return lines.join('\n')
}

async function main() {
  need('iperf3', 'iperf3')
  need('wrk', 'wrk')
  need('nginx', 'nginx-light')
  fs.mkdirSync(path.join(WORK, 'www'))
  fs.writeFileSync(path.join(WORK, 'www', '1k.txt'), 'x'.repeat(1024))
  fs.writeFileSync(path.join(WORK, 'nginx.conf'), `worker_processes 1; daemon off; master_process off;
pid ${WORK}/nginx.pid; error_log ${WORK}/nginx-error.log;
events { worker_connections 30000; }
worker_rlimit_nofile 65535;
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path ${WORK}/body; proxy_temp_path ${WORK}/proxy; fastcgi_temp_path ${WORK}/fcgi;
  uwsgi_temp_path ${WORK}/uwsgi; scgi_temp_path ${WORK}/scgi;
  server { listen 127.0.0.1:${PORT.http} backlog=4096; root ${WORK}/www; } }
`)
  start('nginx', ['-c', path.join(WORK, 'nginx.conf')], 'nginx')
  start('iperf3', ['-s', '-B', '127.0.0.1', '-p', String(PORT.iperf)], 'iperf3')
  await waitForPort('127.0.0.1', PORT.http)
  await waitForPort('127.0.0.1', PORT.iperf)

  const rows = [await measure('direct', '127.0.0.1', [])]

  fs.writeFileSync(path.join(WORK, 'edges.json'), JSON.stringify([{ id: 'bench', secret: 'bench-secret', listenPorts: [PORT.iperf, PORT.http] }]))
  const tunnels = [
    { name: 'tcpTls', transport: 'tcpTls', hubArgs: [] },
    { name: 'quic', transport: 'quic', hubArgs: [] },
    // JavaScript listeners on every connection's streamOpened and streamClosed: the CLI's debug
    // log, which formats a line for each and writes it to the hub's log file.
    { name: 'tcpTls+listeners', transport: 'tcpTls', hubArgs: ['--log-level', 'debug'] },
  ]
  for (const { name, transport, hubArgs } of tunnels) {
    const hub = start(process.execPath, [CLI, 'hub', '--edges', path.join(WORK, 'edges.json'), '--tunnel-port', String(PORT.hub),
      '--bind', '127.0.0.1', '--target-host', '127.0.0.1', '--proxy-protocol', 'none', ...hubArgs], `hub-${name}`)
    await waitForPort('127.0.0.1', PORT.hub)
    const edge = start(process.execPath, [CLI, 'edge', '--hub-host', '127.0.0.1', '--hub-port', String(PORT.hub), '--edge-id', 'bench',
      '--secret', 'bench-secret', '--transport', transport, '--bind', '127.0.0.2', '--no-stun'], `edge-${name}`)
    await waitForPort('127.0.0.2', PORT.http)
    rows.push(await measure(name, '127.0.0.2', [hub.pid, edge.pid]))
    for (const child of [edge, hub]) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    }
  }

  console.log(table(rows))
  fs.writeFileSync(path.join(ROOT, 'bench-results.json'), JSON.stringify(rows, null, 1))
}

try {
  await main()
} finally {
  for (const child of started) if (child.exitCode === null) child.kill('SIGTERM')
  fs.rmSync(WORK, { recursive: true, force: true })
}
