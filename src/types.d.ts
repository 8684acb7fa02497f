// Bun imports WGSL sources as text: `import src from './x.wgsl' with { type: 'text' }`.
declare module '*.wgsl' {
  const source: string;
  export default source;
}
