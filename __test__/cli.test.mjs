// The command line: the demo runs a whole tunnel and exits 0; tokens round-trip; usage errors
// exit 2 with a message. Each command is a child process with a bounded run time.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { PACKAGE_ROOT } from './helpers.mjs'

const CLI = path.join(PACKAGE_ROOT, 'bin', 'remoteingress.js')

function cli(args, timeoutMs = 30_000) {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs })
  assert.equal(result.error, undefined, `remoteingress ${args.join(' ')} did not finish: ${result.error?.message}`)
  return result
}

test('demo carries TCP and UDP through the tunnel, shows the real client addresses and exits 0', { timeout: 60_000 }, () => {
  const { status, stdout, stderr } = cli(['demo'])
  assert.equal(status, 0, stderr)
  const tcpClients = [...stdout.matchAll(/^client {3}127\.0\.0\.1:(\d+) -> 127\.0\.0\.2:(\d+): hello 127\.0\.0\.1:(\d+),/gm)]
  assert.equal(tcpClients.length, 3, stdout)
  for (const [, clientPort, , echoed] of tcpClients) assert.equal(echoed, clientPort, 'the target names the client port')
  for (const [, clientPort, edgePort] of tcpClients) {
    assert.match(stdout, new RegExp(`PROXY TCP4 127\\.0\\.0\\.1 127\\.0\\.0\\.2 ${clientPort} ${edgePort}`))
  }
  const udp = /^client {3}UDP 127\.0\.0\.1:(\d+) -> 127\.0\.0\.2:\d+: hello 127\.0\.0\.1:(\d+),/m.exec(stdout)
  assert.ok(udp, stdout)
  assert.equal(udp[2], udp[1])
  assert.match(stdout, /UDP PROXY v2 0d0a0d0a000d0a515549540a2112000c7f0000017f000002/)
})

test('token encode and decode round-trip; bad input exits non-zero with a message', { timeout: 30_000 }, () => {
  const encoded = cli(['token', 'encode', '--hub-host', 'hub.example.net', '--hub-port', '9443', '--edge-id', 'e1', '--secret', 'top-secret'])
  assert.equal(encoded.status, 0, encoded.stderr)
  const token = encoded.stdout.trim()
  assert.match(token, /^[A-Za-z0-9_-]+$/)
  const decoded = cli(['token', 'decode', token])
  assert.equal(decoded.status, 0, decoded.stderr)
  assert.deepEqual(JSON.parse(decoded.stdout), { hubHost: 'hub.example.net', hubPort: 9443, edgeId: 'e1', secret: 'top-secret' })

  const bad = cli(['token', 'decode', 'not a token'])
  assert.equal(bad.status, 1)
  assert.match(bad.stderr, /ERR_INVALID_TOKEN/)

  const unknownFlag = cli(['hub', '--no-such-flag'])
  assert.equal(unknownFlag.status, 2)
  assert.match(unknownFlag.stderr, /no-such-flag/)

  const missing = cli(['hub'])
  assert.equal(missing.status, 2)
  assert.match(missing.stderr, /--edges is required/)
})
