// Interoperability: a real nginx, listening with `proxy_protocol`, must log the client's real
// address and port from the PROXY header the hub sends.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import net from 'node:net'
import { connect, GUARD_MS, readUntilEnd, startTunnel, stopQuietly, waitFor, withTimeout } from './helpers.mjs'

/** The nginx binary on PATH or in /usr/sbin, or null. */
function findNginx() {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/usr/local/sbin']
  for (const dir of dirs) {
    if (!dir) continue
    const candidate = path.join(dir, 'nginx')
    try {
      fs.accessSync(candidate, fs.constants.X_OK)
      return candidate
    } catch {}
  }
  return null
}

/** A port that is free on 127.0.0.1 right now (nginx binds it itself, so it may be gone by then). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

function nginxConfig(dir, port) {
  return `daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 64; }
http {
  log_format tunnel '$proxy_protocol_addr $proxy_protocol_port $remote_addr "$request" $status';
  access_log ${dir}/access.log tunnel;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port} proxy_protocol;
    location / { return 200 "ok\\n"; }
  }
}
`
}

const nginx = findNginx()
const requireNginx = process.env.REMOTEINGRESS_REQUIRE_NGINX === '1'
const skip = !nginx && !requireNginx ? 'nginx not found on PATH or in /usr/sbin (set REMOTEINGRESS_REQUIRE_NGINX=1 to fail instead)' : false

test('nginx with proxy_protocol logs the real client address and port', { timeout: 120000, skip }, async () => {
  assert.ok(nginx, 'REMOTEINGRESS_REQUIRE_NGINX=1 but nginx is not installed')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remoteingress-nginx-'))
  let child, tunnel, client
  let exited = Promise.resolve()
  try {
    // The free port is only free when asked: if something took it before nginx bound it, nginx
    // exits saying so, and it is started again on another one (bounded).
    let port
    for (let attempt = 1; ; attempt++) {
      port = await freePort()
      fs.writeFileSync(path.join(dir, 'nginx.conf'), nginxConfig(dir, port))
      let stderr = ''
      child = spawn(nginx, ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', path.join(dir, 'nginx.conf')], {
        stdio: ['ignore', 'ignore', 'pipe'],
      })
      child.stderr.on('data', (chunk) => (stderr += chunk))
      exited = new Promise((resolve) => child.once('exit', resolve))
      // nginx writes its pid file after binding its listeners.
      await waitFor(() => fs.existsSync(path.join(dir, 'nginx.pid')) || child.exitCode !== null, {
        what: 'nginx to write its pid file',
      })
      if (child.exitCode === null) break
      await exited
      const log = fs.existsSync(path.join(dir, 'error.log')) ? fs.readFileSync(path.join(dir, 'error.log'), 'utf8') : ''
      assert.ok(/Address already in use/.test(stderr + log) && attempt < 5, `nginx exited at start: ${stderr}${log}`)
    }

    tunnel = await startTunnel({ ports: [port], edgeId: 'nginx-edge' })
    client = await connect(port)
    const clientPort = client.localPort
    const response = readUntilEnd(client)
    client.write('GET /hello HTTP/1.1\r\nHost: tunnel.test\r\nConnection: close\r\n\r\n')
    const text = (await response).toString()
    assert.match(text, /^HTTP\/1\.1 200 /, `response: ${text}`)
    assert.match(text, /\r\n\r\nok\n$/)

    const accessLog = path.join(dir, 'access.log')
    const line = await waitFor(
      () => (fs.existsSync(accessLog) ? fs.readFileSync(accessLog, 'utf8').split('\n').find((l) => l.includes('/hello')) : null),
      { what: 'the request in the nginx access log' },
    )
    assert.equal(line, `127.0.0.1 ${clientPort} 127.0.0.1 "GET /hello HTTP/1.1" 200`)
  } finally {
    client?.destroy()
    await stopQuietly(tunnel)
    if (child && child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid, 'SIGTERM')
      await withTimeout(exited, GUARD_MS, 'nginx to exit').catch(() => process.kill(child.pid, 'SIGKILL'))
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
