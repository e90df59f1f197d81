'use strict'
// Shared helpers for the packaging scripts (build-target.js, pack-test.js, test-arm64.js):
// running commands, installing the cross toolchain when it is missing, target names, staging
// directories and the glibc floor of a built addon. Host side only: nothing here runs under qemu.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..', '..')
const NAPI_CLI = path.join(ROOT, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
const ROOT_PACKAGE = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
const BINARY_NAME = ROOT_PACKAGE.napi.binaryName
const PACKAGE_NAME = ROOT_PACKAGE.name

/** The targets this package ships, with the names napi gives them. */
const TARGETS = {
  'x86_64-unknown-linux-gnu': { platform: 'linux-x64-gnu', arch: 'x64', objdump: 'objdump' },
  'aarch64-unknown-linux-gnu': { platform: 'linux-arm64-gnu', arch: 'arm64', objdump: 'aarch64-linux-gnu-objdump' },
}

class Failure extends Error {}

function fail(message) {
  throw new Failure(message)
}

function target(triple) {
  const info = TARGETS[triple]
  if (!info) fail(`unknown target ${triple}; known: ${Object.keys(TARGETS).join(', ')}`)
  return { triple, ...info, artifact: `${BINARY_NAME}.${info.platform}.node`, packageName: `${PACKAGE_NAME}-${info.platform}` }
}

function hostTriple() {
  if (process.platform !== 'linux') fail(`only Linux hosts are supported, this is ${process.platform}`)
  const triple = Object.keys(TARGETS).find((t) => TARGETS[t].arch === process.arch)
  if (!triple) fail(`no target for host architecture ${process.arch}`)
  return triple
}

/** Where build-target.js puts a build unless told otherwise: next to cargo's own output. */
function defaultStageDir(triple, profile) {
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target')
  return path.join(path.resolve(ROOT, targetDir), 'napi-stage', `${target(triple).platform}-${profile}`)
}

function log(tag, message) {
  process.stderr.write(`[${tag}] ${message}\n`)
}

/** Runs a command with inherited output; fails with a readable message on a non-zero exit. */
function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: 'inherit', cwd: ROOT, ...options })
  if (result.error) fail(`cannot run ${command}: ${result.error.message}`)
  if (result.signal) fail(`${command} ${args.join(' ')} was killed by ${result.signal}`)
  if (result.status !== 0) fail(`${command} ${args.join(' ')} exited with ${result.status}`)
  return result
}

/** Runs a command and returns its stdout; stderr goes to ours unless `quiet`. */
function capture(command, args, options = {}) {
  const { quiet, ...rest } = options
  const result = spawnSync(command, args, {
    cwd: ROOT,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    stdio: ['ignore', 'pipe', quiet ? 'pipe' : 'inherit'],
    ...rest,
  })
  if (result.error) fail(`cannot run ${command}: ${result.error.message}`)
  if (result.status !== 0) {
    const detail = quiet && result.stderr ? `\n${result.stderr.trim()}` : ''
    fail(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}${detail}`)
  }
  return result.stdout
}

function which(command) {
  for (const dir of (process.env.PATH || '').split(path.delimiter).concat(['/usr/sbin', '/usr/bin'])) {
    if (!dir) continue
    const candidate = path.join(dir, command)
    try {
      fs.accessSync(candidate, fs.constants.X_OK)
      return candidate
    } catch {}
  }
  return null
}

/** apt-get install, as root or through sudo. */
function aptInstall(packages) {
  if (!which('apt-get')) fail(`missing ${packages.join(', ')} and there is no apt-get to install them; install them by hand`)
  const sudo = process.getuid && process.getuid() !== 0 ? ['sudo'] : []
  if (sudo.length && !which('sudo')) fail(`missing ${packages.join(', ')}; run as root or install sudo`)
  log('toolchain', `apt-get install ${packages.join(' ')}`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const apt = (args) => run(sudo[0] ?? 'apt-get', sudo.length ? ['apt-get', ...args] : args, { env })
  apt(['update', '-qq'])
  apt(['install', '-y', '-qq', '--no-install-recommends', ...packages])
}

/**
 * Makes sure the aarch64 tools are here, installing only what is missing. For a cross build
 * (`build`, the default): Debian's gcc and libc for arm64 and the rustup target. For running
 * arm64 binaries (`withQemu`): qemu-user-static and the arm64 runtime libraries (libc,
 * libstdc++) under /usr/aarch64-linux-gnu.
 */
function ensureArm64Toolchain({ build = true, withQemu = false } = {}) {
  const sysroot = '/usr/aarch64-linux-gnu'
  const missing = []
  if (build && !which('aarch64-linux-gnu-gcc')) missing.push('gcc-aarch64-linux-gnu')
  if (build && !fs.existsSync(`${sysroot}/include/stdio.h`)) missing.push('libc6-dev-arm64-cross')
  if (!fs.existsSync(`${sysroot}/lib/libc.so.6`) && !missing.includes('libc6-dev-arm64-cross')) missing.push('libc6-arm64-cross')
  if (withQemu && !fs.existsSync(`${sysroot}/lib/libstdc++.so.6`)) missing.push('libstdc++6-arm64-cross')
  if (withQemu && !which('qemu-aarch64-static')) missing.push('qemu-user-static')
  if (missing.length) aptInstall(missing)
  if (build) ensureRustTarget('aarch64-unknown-linux-gnu')
}

function ensureRustTarget(triple) {
  if (!which('rustup')) {
    log('toolchain', `no rustup: assuming the Rust toolchain already has ${triple}`)
    return
  }
  const installed = capture('rustup', ['target', 'list', '--installed'], { quiet: true }).split('\n')
  if (installed.includes(triple)) return
  log('toolchain', `rustup target add ${triple}`)
  run('rustup', ['target', 'add', triple])
}

/** The highest GLIBC_x.y symbol version a shared object needs, or null without objdump. */
function glibcFloor(file, triple) {
  const objdump = target(triple).objdump
  if (!which(objdump)) return null
  const out = capture(objdump, ['-T', file], { quiet: true })
  const versions = [...new Set(out.match(/GLIBC_[0-9.]+/g) ?? [])].map((v) => v.slice('GLIBC_'.length))
  versions.sort(compareVersions)
  return versions.at(-1) ?? null
}

function compareVersions(a, b) {
  const pa = a.split('.').map(Number)
  const pb = b.split('.').map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d) return d
  }
  return 0
}

/** Reads stage.json from a build-target.js output directory and checks the artifact is there. */
function readStage(dir, triple) {
  const t = target(triple)
  const stage = path.resolve(dir)
  for (const file of [t.artifact, 'binding.js', 'binding.d.ts']) {
    if (!fs.existsSync(path.join(stage, file))) {
      fail(`${stage} has no ${file}; build it with: node scripts/build-target.js --target ${triple} --out ${stage}`)
    }
  }
  const infoFile = path.join(stage, 'stage.json')
  const info = fs.existsSync(infoFile) ? JSON.parse(fs.readFileSync(infoFile, 'utf8')) : {}
  if (info.version && info.version !== ROOT_PACKAGE.version) {
    fail(`${stage} holds a build of version ${info.version}, package.json says ${ROOT_PACKAGE.version}: rebuild it`)
  }
  return { dir: stage, node: path.join(stage, t.artifact), ...info }
}

/** Builds `triple` into a staging directory with build-target.js (a no-op rebuild is quick). */
function buildStage(triple, { debug = false, out } = {}) {
  const dir = out ?? defaultStageDir(triple, debug ? 'debug' : 'release')
  const args = [path.join(__dirname, '..', 'build-target.js'), '--target', triple, '--out', dir]
  if (debug) args.push('--debug')
  run(process.execPath, args)
  return readStage(dir, triple)
}

/** A fresh temporary directory, removed by the returned function and on exit (unless `keep`). */
function tempDir(prefix, { keep = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  const remove = () => fs.rmSync(dir, { recursive: true, force: true })
  if (!keep) process.once('exit', remove)
  return { dir, remove: keep ? () => {} : remove }
}

/** `npm` with the flags that keep it quiet and off the network for local tarballs. */
function npm(args, options = {}) {
  return capture('npm', [...args, '--no-audit', '--no-fund', '--no-update-notifier'], { quiet: true, ...options })
}

/**
 * Lays out publishable copies of the root package and the platform packages in `dir`, the way
 * CI does before publishing: the root files npm would pack (from `npm pack --dry-run`), the
 * generated loader from the build, and each platform package with its .node copied in. Then
 * runs `napi pre-publish --skip-optional-publish` there, which validates the platform packages
 * and writes the root's optionalDependencies, exactly as the release job does (minus publish).
 * `stages` maps triple -> { dir, node }; a target without a build gets a placeholder file so
 * pre-publish can run (it is never packed).
 */
function stagePackages(dir, stages) {
  const files = JSON.parse(npm(['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT }))[0].files.map((f) => f.path)
  const rootDir = path.join(dir, 'root')
  const binding = Object.values(stages)[0]
  for (const file of ['binding.js', 'binding.d.ts']) {
    if (!ROOT_PACKAGE.files.includes(file)) fail(`package.json "files" does not list ${file}; the published package would have no loader`)
  }
  for (const file of new Set([...files, 'binding.js', 'binding.d.ts'])) {
    const from = ['binding.js', 'binding.d.ts'].includes(file) ? path.join(binding.dir, file) : path.join(ROOT, file)
    fs.mkdirSync(path.dirname(path.join(rootDir, file)), { recursive: true })
    fs.copyFileSync(from, path.join(rootDir, file))
  }
  fs.cpSync(path.join(ROOT, 'npm'), path.join(rootDir, 'npm'), { recursive: true })
  for (const triple of Object.keys(TARGETS)) {
    const t = target(triple)
    const pkgDir = path.join(rootDir, 'npm', t.platform)
    const manifest = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'))
    if (manifest.version !== ROOT_PACKAGE.version) {
      fail(`npm/${t.platform}/package.json has version ${manifest.version}, package.json ${ROOT_PACKAGE.version}: run \`npx napi version\``)
    }
    if (stages[triple]) fs.copyFileSync(stages[triple].node, path.join(pkgDir, t.artifact))
    else fs.writeFileSync(path.join(pkgDir, t.artifact), 'placeholder: not built in this run\n')
  }
  run(process.execPath, [NAPI_CLI, 'pre-publish', '-t', 'npm', '--no-gh-release', '--skip-optional-publish'], {
    cwd: rootDir,
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const published = JSON.parse(fs.readFileSync(path.join(rootDir, 'package.json'), 'utf8'))
  for (const triple of Object.keys(TARGETS)) {
    const name = target(triple).packageName
    if (published.optionalDependencies?.[name] !== ROOT_PACKAGE.version) {
      fail(`napi pre-publish did not add ${name}@${ROOT_PACKAGE.version} to optionalDependencies: ${JSON.stringify(published.optionalDependencies)}`)
    }
  }
  return { rootDir, optionalDependencies: published.optionalDependencies }
}

/** npm pack `pkgDir` into `dest`; returns the tarball's path. */
function pack(pkgDir, dest) {
  const [info] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', dest], { cwd: pkgDir }))
  return { tarball: path.join(dest, info.filename), files: info.files.map((f) => f.path), size: info.size, unpackedSize: info.unpackedSize }
}

function mib(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`
}

function elapsed(since) {
  return `${((Date.now() - since) / 1000).toFixed(1)} s`
}

/** Runs `main`, turning a Failure (or any error) into a clear message and a non-zero exit. */
function main(tag, fn) {
  const started = Date.now()
  Promise.resolve()
    .then(fn)
    .then(
      () => log(tag, `passed in ${elapsed(started)}`),
      (err) => {
        log(tag, `FAILED after ${elapsed(started)}: ${err instanceof Failure ? err.message : err.stack || err}`)
        process.exitCode = 1
      },
    )
}

module.exports = {
  ROOT,
  NAPI_CLI,
  ROOT_PACKAGE,
  BINARY_NAME,
  PACKAGE_NAME,
  TARGETS,
  Failure,
  fail,
  target,
  hostTriple,
  defaultStageDir,
  log,
  run,
  capture,
  which,
  ensureArm64Toolchain,
  ensureRustTarget,
  glibcFloor,
  compareVersions,
  readStage,
  buildStage,
  tempDir,
  npm,
  stagePackages,
  pack,
  mib,
  elapsed,
  main,
}
