#!/usr/bin/env node
// Runs the Node test files once with every real edge on one transport:
//
//   node scripts/run-tests.mjs <tcpTls|quic> [file ...]
//
// tcpTls runs every __test__/*.test.mjs file; quic runs every one except the files that opt
// out with a first line of exactly this form (the reason is required):
//
//   // transport: tcpTls only (why the file does not run again over QUIC)
//
// Given files restrict the run to those (an opted-out one is left out of a quic run, with a
// note). It runs `node --test --test-concurrency=1 <files>` with REMOTEINGRESS_TEST_TRANSPORT
// set to the transport and exits with its exit code.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const TEST_DIR = path.join(ROOT, '__test__')
const TRANSPORTS = ['tcpTls', 'quic']
const MARKER = /^\/\/ transport:/
const OPT_OUT = /^\/\/ transport: tcpTls only \((.+)\)\s*$/

function usage(message) {
  console.error(`${message}\nusage: node scripts/run-tests.mjs <${TRANSPORTS.join('|')}> [file ...]`)
  process.exit(2)
}

/** The reason a test file gives for running over TCP+TLS only, or null when it runs over every transport. */
function tcpTlsOnlyReason(file) {
  const firstLine = fs.readFileSync(file, 'utf8').split('\n', 1)[0]
  if (!MARKER.test(firstLine)) return null
  const match = OPT_OUT.exec(firstLine)
  if (!match) usage(`${path.relative(ROOT, file)}: a first line '// transport: ...' must read '// transport: tcpTls only (reason)', not: ${firstLine}`)
  return match[1]
}

const [transport, ...requested] = process.argv.slice(2)
if (!TRANSPORTS.includes(transport)) usage(`unknown transport: ${transport ?? '(none)'}`)

const all = fs
  .readdirSync(TEST_DIR)
  .filter((name) => name.endsWith('.test.mjs'))
  .sort()
  .map((name) => path.join(TEST_DIR, name))
let candidates = all
if (requested.length > 0) {
  candidates = requested.map((file) => path.resolve(file))
  for (const file of candidates) if (!all.includes(file)) usage(`not a test file in __test__/: ${file}`)
}

const files = []
for (const file of candidates) {
  const reason = transport === 'quic' ? tcpTlsOnlyReason(file) : null
  if (reason === null) files.push(file)
  else console.error(`[${transport}] leaving out ${path.relative(ROOT, file)}: tcpTls only (${reason})`)
}
if (files.length === 0) usage(`no test file left to run over ${transport}`)

const relative = files.map((file) => path.relative(ROOT, file))
console.error(`[${transport}] node --test --test-concurrency=1 ${relative.join(' ')}`)
const child = spawn(process.execPath, ['--test', '--test-concurrency=1', ...relative], {
  cwd: ROOT,
  stdio: 'inherit',
  env: { ...process.env, REMOTEINGRESS_TEST_TRANSPORT: transport },
})
// A terminal's Ctrl-C reaches the child by itself; a signal sent to this process alone is passed on.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
  })
}
child.on('error', (err) => {
  console.error(`could not run node --test: ${err.message}`)
  process.exit(1)
})
// The child's exit code, or 128 + the signal number when a signal ended it (as a shell reports it).
child.on('exit', (code, signal) => process.exit(code ?? 128 + (os.constants.signals[signal] ?? 0)))
