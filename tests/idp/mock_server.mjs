// Lenient OAuth2 mock issuer for the integration tests, built on oauth2-mock-server.
//
//   node mock_server.mjs CONFIG_JSON_PATH
//
// CONFIG_JSON_PATH holds:
//   {
//     "port": 4020,                       // listen on 127.0.0.1:port
//     "issuer": "http://127.0.0.1:4021",  // optional public URL (e.g. a proxy in front of us);
//                                         // default: http://127.0.0.1:<port>
//     "expires_in": 60 | "60" | null,     // optional: the token response's expires_in.
//                                         // Absent: token_ttl. null: removed from the response
//                                         // (the client must fall back to the JWT's exp).
//     "token_ttl": 3600,                  // optional: JWT lifetime (exp - iat), seconds
//     "audience": "urn:openmetadata"      // optional: aud claim when the request names none
//   }
//
// oauth2-mock-server accepts any client and any credentials. The JWT carries iss, iat, nbf, exp,
// scope (as requested), aud (request's aud/resource/audience, else config.audience) and
// client_id/sub (from HTTP Basic or the client_id form field). Exactly one line,
// {"ready": true, "issuer": "<url>"}, is written to stdout once listening; SIGTERM exits 0.

import { readFileSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import process from 'node:process';

console.log = console.error;
console.info = console.error;

const { OAuth2Server } = await import('oauth2-mock-server');

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node mock_server.mjs CONFIG_JSON_PATH');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const tokenTtl = config.token_ttl ?? 3600;
const hasExpiresIn = Object.hasOwn(config, 'expires_in');

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
// Without an explicit issuer the mock would advertise http://localhost:<port>, and localhost may
// resolve to ::1 first while we only listen on 127.0.0.1.
server.issuer.url = config.issuer ?? `http://127.0.0.1:${config.port}`;

function clientIdOf(req) {
  const match = /^basic\s+([A-Za-z0-9+/=._~-]+)\s*$/i.exec(req.headers.authorization ?? '');
  if (match) {
    const decoded = Buffer.from(match[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon >= 0) return decodeURIComponent(decoded.slice(0, colon));
  }
  return typeof req.body?.client_id === 'string' ? req.body.client_id : undefined;
}

server.service.on('beforeTokenSigning', (token, req) => {
  const { payload } = token;
  payload.exp = payload.iat + tokenTtl;
  if (payload.aud === undefined) {
    const body = req.body ?? {};
    const aud = body.resource ?? body.audience ?? config.audience;
    if (aud !== undefined) payload.aud = aud;
  }
  const clientId = clientIdOf(req);
  if (clientId !== undefined && req.body?.grant_type === 'client_credentials') {
    payload.client_id = clientId;
    payload.sub = clientId;
  }
});

server.service.on('beforeResponse', (response) => {
  if (response.statusCode !== 200 || typeof response.body !== 'object') return;
  if (!hasExpiresIn) {
    response.body.expires_in = tokenTtl;
  } else if (config.expires_in === null) {
    delete response.body.expires_in;
  } else {
    response.body.expires_in = config.expires_in;
  }
  if (response.body.scope === undefined) delete response.body.scope;
});

function shutdown() {
  server
    .stop()
    .catch((err) => console.error('stop failed:', err))
    .finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

try {
  await server.start(config.port, '127.0.0.1');
} catch (err) {
  console.error('listen failed:', err);
  process.exit(1);
}
process.stdout.write(`${JSON.stringify({ ready: true, issuer: server.issuer.url })}\n`);
