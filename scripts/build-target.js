#!/usr/bin/env node
'use strict'
// Builds the addon for one target into a staging directory, never into the package root (where
// the source checkout's own debug addon lives):
//
//   node scripts/build-target.js [--target TRIPLE] [--debug] [--out DIR] [--max-glibc X.Y]
//
// TRIPLE is x86_64-unknown-linux-gnu (default on x64) or aarch64-unknown-linux-gnu (cross build;
// installs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and the rustup target when missing).
// The host's own target is built without --target, so cargo reuses target/<profile>.
// Release by default (LTO, stripped: Cargo.toml's profile); --debug for a quick build.
// DIR gets remoteingress.<platform>.node, the generated binding.js/binding.d.ts and stage.json;
// default: $CARGO_TARGET_DIR/napi-stage/<platform>-<profile>. Cargo output goes to
// $CARGO_TARGET_DIR as usual, so a rebuild with no changes is quick.
// --max-glibc fails the build when the addon needs a newer glibc than X.Y.
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')
const P = require('./lib/packaging.js')

P.main('build', () => {
  const { values } = parseArgs({
    options: {
      target: { type: 'string' },
      debug: { type: 'boolean' },
      out: { type: 'string' },
      'max-glibc': { type: 'string' },
    },
  })
  const triple = values.target ?? P.hostTriple()
  const t = P.target(triple)
  const profile = values.debug ? 'debug' : 'release'
  const out = path.resolve(values.out ?? P.defaultStageDir(triple, profile))

  if (triple === 'aarch64-unknown-linux-gnu' && process.arch !== 'arm64') P.ensureArm64Toolchain()
  else P.ensureRustTarget(triple)
  if (!fs.existsSync(P.NAPI_CLI)) P.run('npm', ['ci', '--no-audit', '--no-fund'])

  fs.mkdirSync(out, { recursive: true })
  fs.rmSync(path.join(out, t.artifact), { force: true })
  fs.rmSync(path.join(out, 'stage.json'), { force: true })
  const args = ['build', '--platform', '--output-dir', out, '--js', 'binding.js', '--dts', 'binding.d.ts']
  // The host target goes unnamed, so cargo reuses target/<profile> from `npm test`'s own builds
  // (naming it would build everything again under target/<triple>/).
  if (triple !== P.hostTriple()) args.push('--target', triple)
  if (!values.debug) args.push('--release')
  P.log('build', `napi ${args.join(' ')}${process.env.CARGO_TARGET_DIR ? ` (CARGO_TARGET_DIR=${process.env.CARGO_TARGET_DIR})` : ''}`)
  const started = Date.now()
  P.run(process.execPath, [P.NAPI_CLI, ...args])
  const seconds = (Date.now() - started) / 1000

  const node = path.join(out, t.artifact)
  if (!fs.existsSync(node)) P.fail(`napi build finished but ${node} is missing`)
  const size = fs.statSync(node).size
  const glibc = P.glibcFloor(node, triple)
  const info = {
    target: triple,
    platform: t.platform,
    profile,
    version: P.ROOT_PACKAGE.version,
    artifact: t.artifact,
    size,
    glibc,
    buildSeconds: Math.round(seconds * 10) / 10,
    builtAt: new Date().toISOString(),
  }
  fs.writeFileSync(path.join(out, 'stage.json'), JSON.stringify(info, null, 2) + '\n')
  P.log('build', `${node}: ${size} bytes (${P.mib(size)}), glibc floor ${glibc ?? '(no objdump)'}, napi build took ${seconds.toFixed(1)} s`)
  if (values['max-glibc']) {
    if (!glibc) P.fail(`cannot check the glibc floor: ${t.objdump} is missing`)
    if (P.compareVersions(glibc, values['max-glibc']) > 0) {
      P.fail(`${t.artifact} needs GLIBC_${glibc}, newer than the allowed ${values['max-glibc']}: build on an older distribution`)
    }
  }
  // For CI and scripts: the staging directory on stdout.
  console.log(out)
})
