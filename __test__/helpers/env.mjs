// The package under test and the loopback addresses every helper and test uses: PACKAGE_ROOT,
// the addon (remoteingress, RemoteIngressHub, RemoteIngressEdge), EDGE_ADDRESS and TARGET_ADDRESS.
// Everything talks to 127.0.0.0/8 only: targets on 127.0.0.1, edge listeners on 127.0.0.2.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const require = createRequire(import.meta.url)

/** Absolute path of the package root, for child processes that `require` it. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const remoteingress = require(PACKAGE_ROOT)
export const { RemoteIngressHub, RemoteIngressEdge } = remoteingress

export const EDGE_ADDRESS = '127.0.0.2'
export const TARGET_ADDRESS = '127.0.0.1'
