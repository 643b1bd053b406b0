// examples/nextjs/app/api/tagstream/route.ts — tagstream's webhook (or this server's own subscriber) revalidates here
import { createRevalidateHandler } from '@tagstream/client/next/server';

export const POST = createRevalidateHandler({ secret: () => process.env.TAGSTREAM_WEBHOOK_SECRET });
