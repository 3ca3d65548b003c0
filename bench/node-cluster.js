// bench/node-cluster.js: a node cluster primary for the benches: SCHED_RR
// (the primary accepts and passes each connection to a worker in turn),
// WORKERS (2) workers running bench/node-app.js unchanged.
'use strict';
const cluster = require('cluster');
const path = require('path');

cluster.schedulingPolicy = cluster.SCHED_RR;
cluster.setupPrimary({ exec: path.join(__dirname, 'node-app.js') });
for (let i = 0; i < (+process.env.WORKERS || 2); i++) cluster.fork();
process.on('SIGTERM', () => {
  for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
  setTimeout(() => process.exit(0), 500);
});
