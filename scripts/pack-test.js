#!/usr/bin/env node
'use strict'
// Packaging test: what a user gets from `npm install @serve.zone/remoteingress` on linux-x64.
//
//   node scripts/pack-test.js [--debug] [--stage DIR] [--arm64-stage DIR] [--keep]
//
// 1. Builds the host addon into a staging directory (release; --debug for a quick debug build),
//    or takes one built before with scripts/build-target.js (--stage DIR).
// 2. Lays out the root package and the platform packages as the release job does and runs
//    `napi pre-publish --skip-optional-publish` (which writes optionalDependencies), then
//    `npm pack`s the root package and the host's platform package.
// 3. `npm install --offline root.tgz platform.tgz` into an empty temp directory (own npm cache,
//    no registry), then checks: require() loads the addon from the platform package and a hub
//    starts and stops (the process exits by itself); `node -e` token encoding prints a token;
//    `npx remoteingress --help` and `token decode` work; a running hub has no child processes
//    and spawned none (the loader's musl check could); a root package installed without a
//    platform package fails to load with ERR_NO_NATIVE_ADDON, the loader's error as its cause.
// Every step has a time limit; the temp directory is removed at the end (--keep leaves it).
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')
const P = require('./lib/packaging.js')

const STEP_TIMEOUT_MS = 30_000
const INSTALL_TIMEOUT_MS = 120_000

P.main('pack-test', async () => {
  const { values } = parseArgs({
    options: {
      debug: { type: 'boolean' },
      stage: { type: 'string' },
      'arm64-stage': { type: 'string' },
      keep: { type: 'boolean' },
    },
  })
  const host = P.hostTriple()
  const t = P.target(host)
  const say = (message) => P.log('pack-test', message)

  let started = Date.now()
  const stage = values.stage ? P.readStage(values.stage, host) : P.buildStage(host, { debug: values.debug })
  say(`addon: ${stage.node} (${stage.profile ?? 'unknown'} build, ${P.mib(fs.statSync(stage.node).size)}), ready in ${P.elapsed(started)}`)

  const tmp = P.tempDir('remoteingress-pack-', { keep: values.keep })
  const stages = { [host]: stage }
  if (values['arm64-stage']) stages['aarch64-unknown-linux-gnu'] = P.readStage(values['arm64-stage'], 'aarch64-unknown-linux-gnu')

  // --- publishable layout, napi pre-publish, npm pack ------------------------------------------
  started = Date.now()
  const { rootDir, optionalDependencies } = P.stagePackages(path.join(tmp.dir, 'stage'), stages)
  say(`napi pre-publish set optionalDependencies ${JSON.stringify(optionalDependencies)}`)
  const tarballs = path.join(tmp.dir, 'tarballs')
  fs.mkdirSync(tarballs)
  const root = P.pack(rootDir, tarballs)
  const platform = P.pack(path.join(rootDir, 'npm', t.platform), tarballs)
  for (const file of ['package.json', 'index.js', 'index.d.ts', 'binding.js', 'binding.d.ts', 'bin/remoteingress.js', 'bin/demo.js']) {
    if (!root.files.includes(file)) P.fail(`the root tarball lacks ${file}: ${root.files.join(', ')}`)
  }
  const strays = root.files.filter((f) => f.endsWith('.node') || f.startsWith('src/') || f.startsWith('npm/') || f.startsWith('__test__/'))
  if (strays.length) P.fail(`the root tarball holds files it should not: ${strays.join(', ')}`)
  if (platform.files.sort().join() !== [t.artifact, 'LICENSE', 'README.md', 'package.json'].sort().join()) {
    P.fail(`the platform tarball should hold only the addon, LICENSE, README.md and package.json: ${platform.files.join(', ')}`)
  }
  say(`packed ${path.basename(root.tarball)} (${root.files.length} files, ${P.mib(root.size)}) and ${path.basename(platform.tarball)} (${P.mib(platform.size)}) in ${P.elapsed(started)}`)

  // --- install into an empty directory, offline --------------------------------------------------
  started = Date.now()
  const cache = path.join(tmp.dir, 'npm-cache')
  const app = path.join(tmp.dir, 'app')
  install(app, cache, [root.tarball, platform.tarball])
  const installed = path.join(app, 'node_modules', ...P.PACKAGE_NAME.split('/'))
  const installedPlatform = path.join(app, 'node_modules', ...t.packageName.split('/'))
  if (!fs.existsSync(path.join(installedPlatform, t.artifact))) P.fail(`npm did not install ${t.packageName} with ${t.artifact}`)
  const others = Object.values(P.TARGETS)
    .map((o) => `${P.PACKAGE_NAME}-${o.platform}`)
    .filter((name) => name !== t.packageName && fs.existsSync(path.join(app, 'node_modules', ...name.split('/'))))
  if (others.length) P.fail(`npm installed platform packages for other platforms: ${others.join(', ')}`)
  const installedManifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'))
  if (installedManifest.optionalDependencies?.[t.packageName] !== P.ROOT_PACKAGE.version) {
    P.fail(`the installed root package does not name ${t.packageName} in optionalDependencies`)
  }
  say(`npm install --offline of both tarballs into an empty directory took ${P.elapsed(started)}`)

  // --- require, hub start/stop ---------------------------------------------------------------------
  const env = { ...process.env, NAPI_RS_ENFORCE_VERSION_CHECK: '1' }
  delete env.NAPI_RS_NATIVE_LIBRARY_PATH
  const hubScript = `
    const started = Date.now()
    const ri = require('${P.PACKAGE_NAME}')
    const loaded = Object.keys(require.cache).filter((f) => f.endsWith('.node'))
    const hub = new ri.RemoteIngressHub()
    hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1' })
      .then(() => hub.getStatus())
      .then(async (status) => {
        await hub.stop()
        console.log(JSON.stringify({ loaded, tunnelPort: status.tunnelPort, running: status.running, fingerprint: status.certFingerprint, ms: Date.now() - started }))
      })
      .catch((err) => { console.error(err); process.exitCode = 1 })`
  const hubRun = node(app, ['-e', hubScript], env, 'require + hub start/stop (the process must exit by itself)')
  const hubResult = JSON.parse(hubRun.stdout.trim().split('\n').at(-1))
  const expectedAddon = fs.realpathSync(path.join(installedPlatform, t.artifact))
  if (hubResult.loaded.length !== 1 || fs.realpathSync(hubResult.loaded[0]) !== expectedAddon) {
    P.fail(`expected the addon from ${expectedAddon}, loaded: ${hubResult.loaded.join(', ') || 'none'}`)
  }
  if (!hubResult.running || !(hubResult.tunnelPort > 0) || !/^sha256\//.test(hubResult.fingerprint)) {
    P.fail(`unexpected hub status: ${JSON.stringify(hubResult)}`)
  }
  say(`require() loaded ${path.relative(app, hubResult.loaded[0])}; a hub listened on 127.0.0.1:${hubResult.tunnelPort}, stopped, and node exited 0 (${hubResult.ms} ms)`)

  // --- token encoding with node -e, the CLI through npx ----------------------------------------------
  const tokenData = { hubHost: 'hub.example.com', hubPort: 8443, edgeId: 'edge-1', secret: 's3cret' }
  const tokenRun = node(app, ['-e', `console.log(require('${P.PACKAGE_NAME}').encodeConnectionToken(${JSON.stringify(tokenData)}))`], env, 'node -e token encoding')
  const token = tokenRun.stdout.trim()
  if (!/^[A-Za-z0-9_\-+/=.]{16,}$/.test(token)) P.fail(`node -e printed no token: ${JSON.stringify(tokenRun.stdout)}`)
  const help = npx(app, cache, ['remoteingress', '--help'], env)
  if (!help.stdout.startsWith('usage: remoteingress')) P.fail(`npx remoteingress --help printed: ${help.stdout}`)
  const decoded = JSON.parse(npx(app, cache, ['remoteingress', 'token', 'decode', token], env).stdout)
  for (const [key, value] of Object.entries(tokenData)) {
    if (decoded[key] !== value) P.fail(`token decode gave ${JSON.stringify(decoded)}, expected ${JSON.stringify(tokenData)}`)
  }
  say(`node -e printed token ${token.slice(0, 24)}…; npx remoteingress --help and token decode work`)

  // --- a running hub is one node process with no children -----------------------------------------
  await checkNoChildProcesses(app, env, say)

  // --- the root package alone: the loader's error ------------------------------------------------------
  started = Date.now()
  const bare = path.join(tmp.dir, 'app-without-platform-package')
  install(bare, cache, [root.tarball])
  const bareRun = spawnSync(process.execPath, ['-e', `
    try { require('${P.PACKAGE_NAME}'); console.log('LOADED') }
    catch (err) {
      const chain = []
      for (let e = err.cause; e; e = e.cause) chain.push(e.message.split('\\n')[0])
      console.log(JSON.stringify({ message: err.message, code: err.code, chain }))
    }`], { cwd: bare, env, encoding: 'utf8', timeout: STEP_TIMEOUT_MS })
  const out = bareRun.stdout.trim()
  if (out === 'LOADED') P.fail('the root package loaded an addon without a platform package installed')
  const loadError = JSON.parse(out)
  const explained = loadError.code === 'ERR_NO_NATIVE_ADDON' && loadError.message.includes('glibc 2.34')
  const loaderCause = loadError.chain.some((m) => m.startsWith('Cannot find native binding'))
  if (!explained || !loaderCause || !loadError.chain.some((m) => m.includes(t.packageName))) {
    P.fail(`unexpected load error without a platform package: ${out}`)
  }
  say(`without a platform package require() throws: "${loadError.message.slice(0, 60)}…", causes: ${loadError.chain.join(' <- ')} (${P.elapsed(started)})`)

  if (values.keep) say(`kept ${tmp.dir}`)
  tmp.remove()
})

function install(dir, cache, tarballs) {
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'pack-test-app', version: '1.0.0', private: true }, null, 2))
  const args = ['install', '--offline', '--cache', cache, '--no-audit', '--no-fund', '--no-update-notifier', '--loglevel', 'error', ...tarballs]
  const result = spawnSync('npm', args, { cwd: dir, encoding: 'utf8', timeout: INSTALL_TIMEOUT_MS })
  if (result.error || result.status !== 0) {
    P.fail(`npm ${args.join(' ')} failed (${result.error?.message ?? `exit ${result.status}`}):\n${result.stderr}`)
  }
}

function node(cwd, args, env, what) {
  const result = spawnSync(process.execPath, args, { cwd, env, encoding: 'utf8', timeout: STEP_TIMEOUT_MS })
  if (result.error?.code === 'ETIMEDOUT') P.fail(`${what}: no exit within ${STEP_TIMEOUT_MS / 1000} s`)
  if (result.error || result.status !== 0) {
    P.fail(`${what}: ${result.error?.message ?? `exit ${result.status ?? result.signal}`}\n${result.stdout}${result.stderr}`)
  }
  return result
}

function npx(cwd, cache, args, env) {
  const full = ['--offline', '--cache', cache, '--no-install', ...args]
  const result = spawnSync('npx', full, { cwd, env, encoding: 'utf8', timeout: STEP_TIMEOUT_MS })
  if (result.error || result.status !== 0) {
    P.fail(`npx ${full.join(' ')}: ${result.error?.message ?? `exit ${result.status ?? result.signal}`}\n${result.stdout}${result.stderr}`)
  }
  return result
}

/**
 * Starts a hub in a child node process (child_process functions instrumented before the
 * package is required), then looks at it from outside: its threads (/proc/PID/task) and any
 * process whose parent is PID. Asks it to stop with SIGTERM; it must exit 0.
 */
async function checkNoChildProcesses(app, env, say) {
  const script = `
    const cp = require('node:child_process')
    const spawned = []
    for (const name of ['spawn', 'spawnSync', 'exec', 'execSync', 'execFile', 'execFileSync', 'fork']) {
      const original = cp[name]
      cp[name] = function (...args) { spawned.push(name + ' ' + String(args[0])); return original.apply(this, args) }
    }
    const ri = require('${P.PACKAGE_NAME}')
    const hub = new ri.RemoteIngressHub()
    hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1' }).then(async () => {
      const { tunnelPort } = await hub.getStatus()
      console.log(JSON.stringify({ ready: true, tunnelPort, spawned }))
      process.once('SIGTERM', () => hub.stop().then(() => console.log(JSON.stringify({ stopped: true, spawned }))))
    }, (err) => { console.error(err); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', script], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const timeout = (ms, what) =>
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: nothing after ${ms / 1000} s\n${stdout}${stderr}`)), ms).unref())
  try {
    await Promise.race([
      new Promise((resolve, reject) => {
        child.stdout.on('data', () => stdout.includes('"ready":true') && resolve())
        exited.then(({ code, signal }) => reject(new Error(`the hub process exited early (${code ?? signal})\n${stdout}${stderr}`)))
      }),
      timeout(STEP_TIMEOUT_MS, 'waiting for the hub to start'),
    ])
    const ready = JSON.parse(stdout.split('\n').find((l) => l.includes('"ready"')))
    const exe = fs.readlinkSync(`/proc/${child.pid}/exe`)
    const threads = new Map()
    const children = new Set()
    for (let sample = 0; sample < 5; sample++) {
      for (const tid of fs.readdirSync(`/proc/${child.pid}/task`)) {
        threads.set(tid, readProc(`/proc/${child.pid}/task/${tid}/comm`).trim())
      }
      for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        const stat = readProc(`/proc/${pid}/stat`)
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        const ppid = stat ? Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) : -1
        if (ppid === child.pid) children.add(`${pid} ${readProc(`/proc/${pid}/cmdline`).replace(/\0/g, ' ').trim()}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    if (fs.realpathSync(exe) !== fs.realpathSync(process.execPath)) P.fail(`the hub process runs ${exe}, not node`)
    if (children.size) P.fail(`the hub process has child processes: ${[...children].join('; ')}`)
    if (ready.spawned.length) P.fail(`loading the package spawned processes: ${ready.spawned.join('; ')}`)
    const names = {}
    for (const name of threads.values()) names[name] = (names[name] ?? 0) + 1
    say(`running hub (pid ${child.pid}, ${exe}): no child processes, none spawned; ${threads.size} threads: ${Object.entries(names).map(([n, c]) => `${n}×${c}`).join(', ')}`)
    child.kill('SIGTERM')
    const { code, signal } = await Promise.race([exited, timeout(STEP_TIMEOUT_MS, 'waiting for the hub process to exit after SIGTERM')])
    if (code !== 0) P.fail(`the hub process exited with ${code ?? signal} after SIGTERM\n${stdout}${stderr}`)
    const stopped = stdout.split('\n').find((l) => l.includes('"stopped"'))
    if (!stopped) P.fail(`the hub process exited without stopping the hub\n${stdout}${stderr}`)
    if (JSON.parse(stopped).spawned.length) P.fail(`the hub process spawned: ${JSON.parse(stopped).spawned.join('; ')}`)
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
}

function readProc(file) {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return '' // the process or thread went away between readdir and read
  }
}
