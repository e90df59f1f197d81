#!/usr/bin/env node
'use strict'
// Makes a source checkout runnable: installs the build tool when node_modules is missing and
// builds the native addon (debug, or --release). Cargo makes a rebuild with no changes a no-op,
// so running this before every test or demo costs a second or two.
const { spawnSync } = require('node:child_process')
const { existsSync } = require('node:fs')
const path = require('node:path')

const root = path.resolve(__dirname, '..')
const release = process.argv.includes('--release')

function run(command, args) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' })
  if (result.error) {
    console.error(`ensure-addon: cannot run ${command}: ${result.error.message}`)
    process.exit(1)
  }
  if (result.status !== 0) process.exit(result.status ?? 1)
}

if (!existsSync(path.join(root, 'Cargo.toml'))) process.exit(0) // an installed package: prebuilt
if (!existsSync(path.join(root, 'node_modules', '@napi-rs', 'cli'))) {
  run('npm', ['ci', '--no-audit', '--no-fund'])
}
const napi = path.join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
const build = ['build', '--platform', '--js', 'binding.js', '--dts', 'binding.d.ts']
if (release) build.push('--release')
run(process.execPath, [napi, ...build])
