// Local OIDC issuer for the integration tests, built on panva's oidc-provider.
//
//   node oidc_provider.mjs CONFIG_JSON_PATH
//
// CONFIG_JSON_PATH holds:
//   {
//     "port": 4010,                         // listen on 127.0.0.1:port
//     "issuer": "http://127.0.0.1:4011",    // public issuer URL (may be a proxy in front of us;
//                                           // a path such as /realms/x is supported too)
//     "access_token_ttl": 3600,             // seconds
//     "resource": "urn:openmetadata",       // the one resource server (JWT audience)
//     "scopes": ["ingestion", "read", "write"],
//     "clients": [{"client_id": "...", "client_secret": "...",
//                  "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post"
//                                                | "private_key_jwt",
//                  "jwks": {"keys": [...]},     // public keys, private_key_jwt only
//                  "scope": "read write"}]      // optional allow-list, default: every scope
//   }
//
// Only the client_credentials grant is offered. Every access token is an RS256 JWT for
// config.resource, whether or not the request names `resource=`. Discovery and every endpoint
// URL are built from the request's Host header, so a reverse proxy that keeps Host is reflected
// in the URLs it serves. Exactly one line, {"ready": true}, is written to stdout once listening;
// everything else (oidc-provider's notices included) goes to stderr. SIGTERM/SIGINT exit 0.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import process from 'node:process';

// oidc-provider prints NOTICEs with console.info: keep stdout for the ready line only.
console.log = console.error;
console.info = console.error;

const { default: Provider, errors } = await import('oidc-provider');

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node oidc_provider.mjs CONFIG_JSON_PATH');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));

const scopes = [...(config.scopes ?? [])];
const knownScopes = new Set(scopes);
const accessTokenTTL = config.access_token_ttl ?? 3600;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `idp-${randomBytes(6).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

const clients = config.clients.map((c) => {
  const meta = {
    client_id: c.client_id,
    token_endpoint_auth_method: c.token_endpoint_auth_method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
  if (c.client_secret !== undefined) meta.client_secret = c.client_secret;
  if (c.jwks !== undefined) meta.jwks = c.jwks;
  if (c.token_endpoint_auth_method === 'private_key_jwt') {
    meta.token_endpoint_auth_signing_alg = c.token_endpoint_auth_signing_alg ?? 'RS256';
  }
  if (c.scope !== undefined) meta.scope = c.scope;
  return meta;
});

function requestedScopes(ctx) {
  const raw = ctx.oidc?.params?.scope;
  return typeof raw === 'string' && raw !== '' ? raw.split(' ') : [];
}

const provider = new Provider(config.issuer, {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', ...scopes],
  claims: { openid: ['sub'] },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== config.resource) {
          throw new errors.InvalidTarget(`unknown resource indicator: ${resourceIndicator}`);
        }
        // oidc-provider silently drops scopes the resource server does not know; a real IdP
        // (Keycloak, Okta, Azure AD) rejects them, and so do we.
        for (const scope of requestedScopes(ctx)) {
          if (!knownScopes.has(scope)) {
            throw new errors.InvalidScope('requested scope is not allowed', scope);
          }
        }
        return {
          scope: scopes.join(' '),
          audience: config.resource,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTokenTTL,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTokenTTL,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
  renderError: (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

// Static clients are validated lazily; validate them now so a bad config fails at start-up.
for (const { client_id: clientId } of clients) {
  try {
    if (!(await provider.Client.find(clientId))) throw new Error('not found');
  } catch (err) {
    console.error(`invalid client ${clientId}:`, err);
    process.exit(1);
  }
}

provider.on('server_error', (ctx, err) => {
  console.error('oidc-provider server_error:', err);
});

// Mount under the issuer's path (if any), the way express would: originalUrl keeps the full
// path so oidc-provider's urlFor() includes the mount path in the URLs it builds.
const mountPath = new URL(config.issuer).pathname.replace(/\/+$/, '');
const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (mountPath) {
    const { url } = req;
    if (url !== mountPath && !url.startsWith(`${mountPath}/`) && !url.startsWith(`${mountPath}?`)) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'not_found' }));
      return;
    }
    req.originalUrl = url;
    req.url = url.slice(mountPath.length) || '/';
  }
  callback(req, res);
});
server.keepAliveTimeout = 5000;

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.on('error', (err) => {
  console.error('listen failed:', err);
  process.exit(1);
});
server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
});
