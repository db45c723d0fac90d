// Preloaded into the Portkey gateway by scripts/bench.sh (node --require): its start script calls
// @hono/node-server's serve({ port }) with no hostname, which listens on every interface. This
// makes a listen(port) without a host listen on BENCH_LISTEN_HOST (default 127.0.0.1) instead.
'use strict';
const net = require('net');
const host = process.env.BENCH_LISTEN_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (args.length < 2 || args[1] === undefined || args[1] === null) args[1] = host;
    else if (typeof args[1] !== 'string') args.splice(1, 0, host); // listen(port, backlog | callback)
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host && !args[0].path) {
    args[0] = { ...args[0], host };
  }
  return listen.apply(this, args);
};
