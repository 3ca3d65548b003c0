// An unchanged cluster/PM2-style worker: it only calls listen(PORT); under
// corral's "ipc": "node" Node's cluster module asks corrald for the socket.
'use strict';
const cluster = require('cluster');
require('http').createServer((req, res) => {
  res.setHeader('X-Worker', String(cluster.worker.id - 1));
  res.end(`pid ${process.pid}\n`);
}).listen(Number(process.env.PORT));
