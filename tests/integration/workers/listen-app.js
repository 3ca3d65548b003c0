// An unchanged cluster/PM2-style worker: it only calls listen(PORT); under
// corral's "ipc": "node" Node's cluster module asks corrald for the socket.
// FULL_SLOT=N (tests): that slot's server takes one connection at a time
// (server.maxConnections), so Node's cluster refuses the others.
'use strict';
const cluster = require('cluster');
const server = require('http').createServer((req, res) => {
  res.setHeader('X-Worker', String(cluster.worker.id - 1));
  res.end(`pid ${process.pid}\n`);
});
if (process.env.FULL_SLOT === String(cluster.worker.id - 1)) server.maxConnections = 1;
server.listen(Number(process.env.PORT));
