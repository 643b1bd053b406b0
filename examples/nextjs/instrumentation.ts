// examples/nextjs/instrumentation.ts — each instance subscribes itself: no webhook list to keep as instances come and go
export async function register() {
  if (process.env.NEXT_RUNTIME === 'nodejs' && process.env.TAGSTREAM_REVALIDATE_URL) {
    const { startSubscriber } = await import('@tagstream/client/next/server');
    startSubscriber({
      url: `${process.env.TAGSTREAM_URL}/events`,
      revalidateUrl: process.env.TAGSTREAM_REVALIDATE_URL, // e.g. http://127.0.0.1:3000/api/tagstream
      secret: process.env.TAGSTREAM_WEBHOOK_SECRET!,
    });
  }
}
