// Runs web-push-testing's push service on 127.0.0.1 (never every
// interface), on the port given as the first argument (0: any free one),
// and prints `listening PORT` once it accepts connections. The
// subscriptions it makes have endpoints on 127.0.0.1 as well.
'use strict';

const WebPushTestingServer = require('web-push-testing/src/server.js');
const { PushApiModel } = require('web-push-testing/src/PushApiModel.js');

const requested = Number(process.argv[2] || 0);
const model = new PushApiModel();
const server = new WebPushTestingServer(model, requested);
server.setRequestHandlers();
const listener = server._app.listen(requested, '127.0.0.1', () => {
  const { port } = listener.address();
  model.notifyUrl = 'http://127.0.0.1:' + port + '/notify/';
  console.log('listening ' + port);
});
listener.on('error', (err) => {
  console.error(err);
  process.exit(1);
});
// The test that started it ends it; a closed stdin means it is gone.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
