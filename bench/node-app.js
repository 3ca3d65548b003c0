// bench/node-app.js: the plain Node.js app of bench/node and bench/handoff.
// Nothing corral- or cluster-specific: an http server on PORT (and HOST if
// set) answering "Hello World\n" with an X-Worker-Pid header; GET /cpu/MS
// burns MS milliseconds of CPU first (the skewed workload of bench/handoff).
// Run as is by node cluster (bench/node-cluster.js), `pm2 start -i 2`, and
// corrald --ipc node (the unchanged-app rows). On SIGTERM or SIGINT it
// prints a "stats:" line to stderr, from which the benches compute the
// per-worker share, and exits.
'use strict';
const http = require('http');

let requests = 0, conns = 0;
const server = http.createServer((req, res) => {
  requests++;
  const m = /^\/cpu\/(\d+)/.exec(req.url);
  if (m) {
    const t0 = process.cpuUsage();
    for (;;) {
      const d = process.cpuUsage(t0);
      if ((d.user + d.system) / 1000 >= +m[1]) break;
    }
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 12,
                       'X-Worker-Pid': String(process.pid) });
  res.end('Hello World\n');
});
server.on('connection', () => conns++);
server.listen(+process.env.PORT, process.env.HOST);

function stop() {
  process.stderr.write(`stats: pid ${process.pid} accepted ${conns} connections, served ${requests} requests\n`);
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);     // pm2 stops with SIGINT
